"""Tests of makima.client against the real server."""
