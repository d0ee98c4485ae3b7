"""`python -m mcopt ...` is the same as the `mcopt` command."""

import sys

from mcopt.cli import main

sys.exit(main())
