"""sweepdae.store."""
