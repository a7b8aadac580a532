"""sweepdae.runner."""
