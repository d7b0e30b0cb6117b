"""The `side` command line (parsers in `main`; kept light so `side --help` does not import torch)."""

from .main import main

__all__ = ["main"]
