"""Fixtures of the daemon-side worktree tests: hermetic git, and the service's stores for exchanges.

The git layer's hermetic configuration and the object store suite's per-backend stores are the
same here, so they are imported rather than written twice.
"""

from __future__ import annotations

from tests.git.conftest import hermetic_git  # noqa: F401 (an autouse fixture)
from tests.objects.conftest import history, objects_db, owner_id, stores  # noqa: F401 (fixtures)
