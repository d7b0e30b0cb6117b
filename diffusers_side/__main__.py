"""`python -m diffusers_side` is the `side` command."""

import sys

from .cli import main

sys.exit(main())
