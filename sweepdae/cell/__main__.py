"""`python -m sweepdae.cell runs/<key>` and `accelerate launch -m sweepdae.cell runs/<key>`."""

import sys

from sweepdae.cell.run import main

sys.exit(main())
