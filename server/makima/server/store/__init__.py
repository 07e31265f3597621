"""Storage: SQLModel tables, engine and sessions, set-based queries, Alembic migrations.

Queries take a session, may flush, and never commit: the domain owns transactions.
"""
