"""`python -m controller` runs the `ramp` command line."""

import sys

from controller.cli import main

sys.exit(main())
