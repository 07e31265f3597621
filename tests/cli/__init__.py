"""Tests of the `makima` command line, run as a subprocess against the real server."""
