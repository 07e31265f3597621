"""The `makima` command line."""

from makima.cli.main import main

__all__ = ["main"]
