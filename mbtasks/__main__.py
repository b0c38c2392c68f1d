"""`python -m mbtasks`: the command line, as the `mbtasks` script runs it."""

import sys

from .cli import main

sys.exit(main())
