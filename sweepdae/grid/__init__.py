"""sweepdae.grid."""
