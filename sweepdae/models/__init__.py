"""sweepdae.models."""
