"""`python -m diffusers_side` is the `side` command."""

import sys

from .cli.main import main

sys.exit(main())
