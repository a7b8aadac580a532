"""sweepdae.report."""
