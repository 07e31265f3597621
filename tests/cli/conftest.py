"""The installed `makima` command, run as a subprocess so that the in-process server keeps serving."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from makima.server.app import App
from tests.helpers import Api

MAKIMA = str(Path(sys.executable).parent / "makima")


@dataclass
class Result:
    code: int
    out: str
    err: str


Makima = Callable[..., Awaitable[Result]]


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MAKIMA_")}


async def run_makima(*args: str, env: dict[str, str]) -> Result:
    proc = await asyncio.create_subprocess_exec(
        MAKIMA, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


@pytest.fixture
def cli_env(server: App, api: Api, tmp_path: Path) -> dict[str, str]:
    """Environment of a user of the test's owner: address and key from MAKIMA_ADDRESS / MAKIMA_API_KEY,
    and a config directory of its own (no context of the machine's user leaks in)."""
    return {
        **_clean_env(),
        "MAKIMA_ADDRESS": f"127.0.0.1:{server.port}",
        "MAKIMA_API_KEY": api.key,
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
    }


@pytest.fixture
def makima(cli_env: dict[str, str]) -> Makima:
    """Run `makima ARGS...` as the test's owner; extra environment as keyword arguments."""

    async def run(*args: str, **env: str) -> Result:
        return await run_makima(*args, env={**cli_env, **env})

    return run
