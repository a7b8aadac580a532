"""sweepdae.eval."""
