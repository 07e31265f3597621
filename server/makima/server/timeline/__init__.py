"""Live fan-out of timeline commits: in-process wake-ups, plus PostgreSQL LISTEN/NOTIFY between processes.

Notifications only wake streams up; the database stays the source of truth, and streams re-check it
periodically, so a lost notification delays an event by at most the re-check interval.
"""
