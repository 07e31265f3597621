"""Server settings: command-line flags with MAKIMA_* environment variables as defaults."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from makima.server.store.engine import DEFAULT_DATABASE_URL

DEFAULT_LISTEN = "127.0.0.1:50051"


@dataclass(frozen=True)
class Settings:
    listen: str = DEFAULT_LISTEN
    database_url: str = DEFAULT_DATABASE_URL
    workspace_root: Path = Path("./workspace")
    # Where a PostgreSQL-backed server caches the packs of the object store; None: under workspace_root.
    object_cache_dir: Path | None = None
    # Seconds in-flight calls get to finish on SIGTERM/SIGINT before they are cancelled.
    shutdown_grace: float = 10.0
    # Seconds between keep-alives on an idle StreamTimeline.
    keep_alive_seconds: float = 15.0
    # Seconds between database re-checks of an idle stream (catches a missed notification).
    timeline_recheck_seconds: float = 1.0
    # Seconds a claimed task's lease lasts without a heartbeat (a ClaimTask long-poll also re-checks the
    # database every timeline_recheck_seconds).
    lease_seconds: float = 30.0
    # Seconds between sweeps that mark running tasks whose lease expired INTERRUPTED.
    sweep_seconds: float = 5.0
