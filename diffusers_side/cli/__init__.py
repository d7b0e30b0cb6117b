"""The `side` command line (kept light: `side --help` imports no torch)."""

from .app import build_parser, main

__all__ = ["build_parser", "main"]
