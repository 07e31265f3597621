"""TLS and mutual TLS end to end: certificates made in the test, the Python client, the CLI and grpcurl."""

from __future__ import annotations

import json
import logging
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from makima.client import AsyncClient, Tls, UnavailableError
from makima.server.app import App, start
from makima.server.config import Settings
from makima.server.domain.auth import create_api_key
from tests.test_server import GRPCURL, run
from tests.tls import Authority, Pair

BIN = Path(sys.executable).parent


@pytest.fixture
def ca(tmp_path: Path) -> Authority:
    return Authority(tmp_path)


async def serve(database_url: str, tmp_path: Path, server: Pair, client_ca: Path | None = None) -> App:
    return await start(
        Settings(
            listen="127.0.0.1:0",
            database_url=database_url,
            workspace_root=tmp_path / "ws",
            shutdown_grace=1.0,
            tls_cert=server.cert,
            tls_key=server.key,
            tls_client_ca=client_ca,
        )
    )


@pytest.fixture
async def tls_app(database_url: str, tmp_path: Path, ca: Authority) -> AsyncIterator[App]:
    app = await serve(database_url, tmp_path, ca.issue("server", server=True))
    yield app
    await app.stop(1.0)


@pytest.fixture
async def mtls_app(database_url: str, tmp_path: Path, ca: Authority) -> AsyncIterator[App]:
    app = await serve(database_url, tmp_path, ca.issue("server", server=True), client_ca=ca.cert)
    yield app
    await app.stop(1.0)


async def new_key(app: App) -> str:
    return (await create_api_key(app.runtime, owner_id=uuid.uuid4())).secret


async def test_tls_for_the_client_the_cli_the_daemon_and_grpcurl(tls_app: App, ca: Authority, tmp_path: Path) -> None:
    address, key = f"127.0.0.1:{tls_app.port}", await new_key(tls_app)
    async with AsyncClient(address, key, tls=Tls(ca=ca.cert.read_bytes()), timeout=10) as client:
        assert (await client.create_contract(name="over tls")).contract.name == "over tls"
    async with AsyncClient(address, key, timeout=3) as plaintext:
        with pytest.raises(UnavailableError):
            await plaintext.create_contract(name="in the clear")

    env = os.environ | {"MAKIMA_ADDRESS": address, "MAKIMA_API_KEY": key}
    code, out, err = await run(
        str(BIN / "makima"), "--tls-ca", str(ca.cert), "--json", "contract-create", "--name", "cli", env=env
    )
    assert code == 0, err
    assert json.loads(out)["contract"]["name"] == "cli"
    code, out, err = await run(
        str(BIN / "makima"), "--json", "contract-create", "--name", "env", env=env | {"MAKIMA_TLS_CA": str(ca.cert)}
    )
    assert code == 0, err
    async with AsyncClient(address, key, tls=Tls(ca=ca.cert.read_bytes()), timeout=10) as client:
        task = (await client.create_task(name="over tls")).task
    code, _, err = await run(
        str(BIN / "makima"),
        "daemon",
        "run",
        "--once",
        "--dir",
        str(tmp_path / "daemon"),
        "--command",
        "echo done",
        env=env | {"MAKIMA_TLS_CA": str(ca.cert)},
    )
    assert code == 0, err
    assert task.id in err  # the daemon claimed it over TLS
    code, _, err = await run(str(BIN / "makima"), "--timeout", "3", "contract-create", "--name", "x", env=env)
    assert code == 64 + 14, err  # plaintext to a TLS server: UNAVAILABLE
    # A context can hold the CA too: flags, then the environment, then the context.
    config = env | {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    code, _, err = await run(
        str(BIN / "makima"), "config", "set-context", "tls", "--tls-ca", str(ca.cert), "--use", env=config
    )
    assert code == 0, err
    code, out, err = await run(str(BIN / "makima"), "--json", "contract", "create", "--name", "context", env=config)
    assert code == 0, err
    assert json.loads(out)["contract"]["name"] == "context"

    code, out, err = await run(GRPCURL, "-cacert", str(ca.cert), address, "list")
    assert code == 0, err
    assert "makima.v1.SupervisorService" in out.split()
    code, out, err = await run(
        GRPCURL,
        "-cacert",
        str(ca.cert),
        "-H",
        f"x-api-key: {key}",
        "-d",
        '{"name": "from grpcurl"}',
        address,
        "makima.v1.SupervisorService/CreateContract",
    )
    assert code == 0, err
    assert json.loads(out)["contract"]["name"] == "from grpcurl"


async def test_mutual_tls_requires_a_client_certificate_of_the_ca(mtls_app: App, ca: Authority, tmp_path: Path) -> None:
    address, key = f"127.0.0.1:{mtls_app.port}", await new_key(mtls_app)
    client_pair = ca.issue("client", server=False)
    stranger = Authority(tmp_path, name="another CA").issue("stranger", server=False)
    trusted = Tls(ca=ca.cert.read_bytes(), cert=client_pair.cert.read_bytes(), key=client_pair.key.read_bytes())
    async with AsyncClient(address, key, tls=trusted, timeout=10) as client:
        assert (await client.create_contract(name="mtls")).contract.name == "mtls"
    for refused in (
        Tls(ca=ca.cert.read_bytes()),
        Tls(ca=ca.cert.read_bytes(), cert=stranger.cert.read_bytes(), key=stranger.key.read_bytes()),
    ):
        async with AsyncClient(address, key, tls=refused, timeout=3) as client:
            with pytest.raises(UnavailableError):
                await client.create_contract(name="refused")

    env = os.environ | {
        "MAKIMA_ADDRESS": address,
        "MAKIMA_API_KEY": key,
        "MAKIMA_TLS_CA": str(ca.cert),
        "MAKIMA_TLS_CERT": str(client_pair.cert),
        "MAKIMA_TLS_KEY": str(client_pair.key),
    }
    code, out, err = await run(str(BIN / "makima"), "--json", "contract-create", "--name", "cli mtls", env=env)
    assert code == 0, err
    code, _, err = await run(
        str(BIN / "makima"), "--tls-key", "", "contract-create", "--name", "x", env=env | {"MAKIMA_TLS_KEY": ""}
    )
    assert code == 2 and "key" in err  # a certificate without its key is a usage error, before any call

    code, out, err = await run(
        GRPCURL, "-cacert", str(ca.cert), "-cert", str(client_pair.cert), "-key", str(client_pair.key), address, "list"
    )
    assert code == 0, err
    assert "makima.v1.HistoryService" in out.split()
    code, _, err = await run(GRPCURL, "-cacert", str(ca.cert), address, "list")
    assert code != 0


async def test_plaintext_beyond_loopback_logs_a_warning(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for listen, warned in (("127.0.0.1:0", False), ("0.0.0.0:0", True)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="makima.server.app"):
            app = await start(Settings(listen=listen, database_url=database_url, workspace_root=tmp_path / "ws"))
            await app.stop(1.0)
        assert any("plaintext" in r.getMessage() for r in caplog.records) is warned, listen


@pytest.mark.parametrize(
    ("argv", "code", "named"),
    [
        (["--tls-cert", "x.crt"], 2, "--tls-key"),
        (["--tls-client-ca", "ca.crt"], 2, "--tls-client-ca"),
        (["--tls-cert", "missing.crt", "--tls-key", "missing.key"], 1, "--tls-cert"),
    ],
)
async def test_tls_settings_that_cannot_work_are_one_line(
    tmp_path: Path, argv: list[str], code: int, named: str
) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    result = await run(str(BIN / "makima-server"), "serve", "--database-url", database, *argv, cwd=tmp_path)
    assert (result[0], result[2].count("\n")) == (code, 1), result
    assert result[2].startswith(f"makima-server: {named}:")
