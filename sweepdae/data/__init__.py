"""sweepdae.data."""
