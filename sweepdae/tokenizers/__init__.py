"""sweepdae.tokenizers."""
