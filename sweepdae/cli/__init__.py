"""sweepdae.cli."""
