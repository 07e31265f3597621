"""Alembic migrations (append-only); run through makima.server.store.migrate."""
