"""`python -m sweepdae` is the `sweepdae` command."""

from sweepdae.cli import main

main()
