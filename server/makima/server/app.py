"""Assembles the gRPC server: servicers, interceptor, health, reflection, graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from sqlalchemy.exc import DBAPIError

from makima.server import telemetry
from makima.server.api.daemon import DaemonServicer
from makima.server.api.history import HistoryServicer
from makima.server.api.interceptor import ServiceInterceptor
from makima.server.api.reflection import add_reflection
from makima.server.api.supervisor import SupervisorServicer
from makima.server.api.task_fork import TaskForkServicer
from makima.server.config import EXIT_FAILURE, Address, SettingError, Settings, is_loopback, parse_listen
from makima.server.domain.auth import Authenticator
from makima.server.domain.collector import GC_GRACE, GC_INTERVAL_SECONDS, ObjectCollector
from makima.server.domain.objects import ObjectStores
from makima.server.domain.page_tokens import PageTokenKeys
from makima.server.domain.runtime import Runtime
from makima.server.domain.sweeper import LeaseSweeper
from makima.server.domain.telemetry import MetricsSampler
from makima.server.domain.workspace import Workspace
from makima.server.store import migrate
from makima.server.store.engine import Database, DatabaseUnreachable, DatabaseUrlError, describe_database_error
from makima.server.timeline.hub import TimelineHub
from makima.server.timeline.listener import PostgresListener
from makima.v1 import (
    daemon_pb2,
    daemon_pb2_grpc,
    history_pb2,
    history_pb2_grpc,
    supervisor_pb2,
    supervisor_pb2_grpc,
    task_fork_pb2,
    task_fork_pb2_grpc,
)

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    history_pb2.DESCRIPTOR.services_by_name["HistoryService"].full_name,
    supervisor_pb2.DESCRIPTOR.services_by_name["SupervisorService"].full_name,
    task_fork_pb2.DESCRIPTOR.services_by_name["TaskForkService"].full_name,
    daemon_pb2.DESCRIPTOR.services_by_name["DaemonService"].full_name,
)


@dataclass
class App:
    """A started server and what it owns."""

    server: aio.Server
    port: int
    settings: Settings
    runtime: Runtime
    health: health.aio.HealthServicer
    hub: TimelineHub
    listener: PostgresListener | None
    sweeper: LeaseSweeper
    page_tokens: PageTokenKeys
    objects: ObjectStores
    collector: ObjectCollector
    sampler: MetricsSampler | None
    stop_metrics: Callable[[], None] | None
    tracing: TracerProvider | None

    async def stop(self, grace: float) -> None:
        """Report NOT_SERVING, end live streams, let in-flight calls finish within `grace`, release the rest."""
        await self.health.enter_graceful_shutdown()
        self.hub.close()
        await self.server.stop(grace)
        await self.sweeper.stop()
        await self.collector.stop()
        if self.sampler is not None:
            await self.sampler.stop()
        if self.stop_metrics is not None:
            self.stop_metrics()
        if self.tracing is not None:
            self.tracing.force_flush()
        if self.listener is not None:
            await self.listener.stop()
        await self.objects.close()
        await self.runtime.db.dispose()


async def start(settings: Settings, *, tracer_provider: TracerProvider | None = None) -> App:
    """Migrate the database, then start serving on `settings.listen` (port 0 picks a free port).

    Traces go to `tracer_provider`, else to what the OTEL_* variables ask for (none by default).

    SettingError names the setting at fault when the address, the database or the workspace root
    cannot work; the port is checked first, so a taken one fails before the database is touched.
    """
    address = _address(settings.listen)
    credentials = server_credentials(settings)
    tracing = tracer_provider if tracer_provider is not None else telemetry.tracer_provider_from_env()
    _check_bindable(address, reuse_port=settings.reuse_port)
    metrics = telemetry.enable_metrics() if settings.metrics else None
    stop_metrics = telemetry.serve_metrics(settings.metrics_listen) if settings.metrics_listen else None
    try:
        return await _start(settings, address, credentials, tracing, metrics, stop_metrics)
    except BaseException:
        if stop_metrics is not None:
            stop_metrics()
        raise


async def _start(
    settings: Settings,
    address: Address,
    credentials: grpc.ServerCredentials | None,
    tracing: TracerProvider | None,
    metrics: telemetry.Metrics | None,
    stop_metrics: Callable[[], None] | None,
) -> App:
    db, _applied = await open_database(settings.database_url)
    if tracing is not None:
        telemetry.trace_database(db.engine, tracing)
    try:
        workspace = Workspace(settings.workspace_root)
    except OSError as exc:
        await db.dispose()
        raise SettingError(
            "workspace_root", f"cannot create {settings.workspace_root}: {exc.strerror}", exit_code=EXIT_FAILURE
        ) from exc
    hub = TimelineHub()
    objects = ObjectStores.for_database(db, workspace_root=workspace.root, cache_dir=settings.object_cache_dir)
    runtime = Runtime(db, objects=objects, workspace=workspace, hub=hub)
    page_tokens = PageTokenKeys(runtime)
    await page_tokens.load()
    listener = PostgresListener(db.url, hub) if db.dialect == "postgresql" else None
    if listener is not None:
        listener.start()
    server = aio.server(
        interceptors=[
            ServiceInterceptor(
                Authenticator(runtime), tracer=None if tracing is None else tracing.get_tracer("makima.server")
            )
        ],
        options=[("grpc.so_reuseport", 1 if settings.reuse_port else 0)],
    )
    history = HistoryServicer(
        runtime, page_tokens, keep_alive=settings.keep_alive_seconds, recheck=settings.timeline_recheck_seconds
    )
    history_pb2_grpc.add_HistoryServiceServicer_to_server(history, server)
    supervisor_pb2_grpc.add_SupervisorServiceServicer_to_server(SupervisorServicer(runtime), server)
    task_fork_pb2_grpc.add_TaskForkServiceServicer_to_server(TaskForkServicer(runtime), server)
    daemon = DaemonServicer(runtime, lease_seconds=settings.lease_seconds, recheck=settings.timeline_recheck_seconds)
    daemon_pb2_grpc.add_DaemonServiceServicer_to_server(daemon, server)

    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    add_reflection((*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name), server)
    if credentials is None and not is_loopback(address.host):
        log.warning(
            "serving plaintext on a non-loopback address: API keys cross the network in the clear; "
            "give --tls-cert and --tls-key",
            extra={"listen": settings.listen},
        )
    try:
        if credentials is None:
            port = server.add_insecure_port(str(address))
        else:
            port = server.add_secure_port(str(address), credentials)
    except RuntimeError as exc:  # grpc's whole report of a failed bind; the socket error says why
        if listener is not None:
            await listener.stop()
        await objects.close()
        await db.dispose()
        problem = _bind_problem(address, reuse_port=settings.reuse_port) or "cannot bind"
        raise SettingError("listen", problem, exit_code=EXIT_FAILURE) from exc
    await server.start()
    sweeper = LeaseSweeper(runtime, interval=settings.sweep_seconds)
    sweeper.start()
    collector = ObjectCollector(runtime, objects, interval=GC_INTERVAL_SECONDS, grace=GC_GRACE)
    collector.start()
    sampler = None
    if metrics is not None:
        sampler = MetricsSampler(runtime, metrics, interval=telemetry.SAMPLE_SECONDS)
        sampler.start()
    log.info(
        "serving",
        extra={
            "listen": settings.listen,
            "port": port,
            "database": db.shown_url,
            "workspace_root": str(workspace.root),
            "workers": settings.workers,
            "tls": "off" if credentials is None else "mutual" if settings.tls_client_ca else "on",
            "metrics": settings.metrics_listen,
            "traces": tracing is not None,
        },
    )
    return App(
        server=server,
        port=port,
        settings=settings,
        runtime=runtime,
        health=health_servicer,
        hub=hub,
        listener=listener,
        sweeper=sweeper,
        page_tokens=page_tokens,
        objects=objects,
        collector=collector,
        sampler=sampler,
        stop_metrics=stop_metrics,
        tracing=tracing,
    )


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """The TLS credentials `settings` ask for, None for plaintext; SettingError names a missing or unreadable file."""
    if settings.tls_client_ca is not None and settings.tls_cert is None:
        raise SettingError("tls_client_ca", "requiring client certificates needs TLS: give tls_cert and tls_key too")
    if settings.tls_cert is None and settings.tls_key is None:
        return None
    if settings.tls_cert is None or settings.tls_key is None:
        missing = "tls_key" if settings.tls_key is None else "tls_cert"
        raise SettingError(missing, "TLS needs both the certificate and its key")
    pem: dict[str, bytes] = {}
    for field in ("tls_cert", "tls_key", "tls_client_ca"):
        path: Path | None = getattr(settings, field)
        if path is None:
            continue
        try:
            pem[field] = path.read_bytes()
        except OSError as exc:
            raise SettingError(field, f"cannot read {path}: {exc.strerror}", exit_code=EXIT_FAILURE) from exc
    return grpc.ssl_server_credentials(
        [(pem["tls_key"], pem["tls_cert"])],
        root_certificates=pem.get("tls_client_ca"),
        require_client_auth="tls_client_ca" in pem,
    )


async def open_database(url: str) -> tuple[Database, list[str]]:
    """Connect to the database at `url` and bring its schema up to date; returns it and the
    migrations applied (see `migrate.upgrade`).

    SettingError on `database_url` otherwise: EXIT_USAGE for a URL that cannot work anywhere,
    EXIT_FAILURE for a database that cannot be reached, opened or migrated here.
    """
    try:
        db = Database(url)
    except DatabaseUrlError as exc:
        raise SettingError("database_url", str(exc)) from exc
    try:
        await db.ping()
        applied = await migrate.upgrade(db)
    except DatabaseUnreachable as exc:
        await db.dispose()
        raise SettingError("database_url", str(exc), exit_code=EXIT_FAILURE) from exc
    except (DBAPIError, OSError) as exc:
        await db.dispose()
        problem = f"cannot migrate {db.shown_url}: {describe_database_error(exc)}"
        raise SettingError("database_url", problem, exit_code=EXIT_FAILURE) from exc
    return db, applied


def _address(listen: str) -> Address:
    try:
        return parse_listen(listen)
    except ValueError as exc:
        raise SettingError("listen", str(exc)) from None


def _check_bindable(address: Address, *, reuse_port: bool) -> None:
    problem = _bind_problem(address, reuse_port=reuse_port)
    if problem is not None:
        raise SettingError("listen", problem, exit_code=EXIT_FAILURE)


def _bind_problem(address: Address, *, reuse_port: bool) -> str | None:
    """Why grpc could not bind `address`, found by binding a plain socket the way it does; None if it can.

    grpc binds every address the host resolves to and fails only if none binds; its own error says
    nothing of the cause. SO_REUSEADDR as grpc sets it, so a port left in TIME_WAIT is no problem.
    """
    try:
        infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot resolve host {address.host!r}: {exc.strerror}"
    problems = []
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                problems.append(f"{address}: {(exc.strerror or str(exc)).lower()}")
                continue
        return None
    return problems[0] if problems else f"{address.host!r} resolves to no address"


def hold_port(listen: str) -> socket.socket | None:
    """Claim `listen`'s port for the workers of one `serve --workers N`; keep the socket open while they run.

    Workers share their port through SO_REUSEPORT, which any other process of the same user could
    join as well. On Linux an abstract socket named after the port is held as a lock, so a second
    `serve --workers` on the port fails instead of splitting its calls; elsewhere nothing is held.
    Also checks that the workers will be able to bind. SettingError on `listen` otherwise.
    """
    address = _address(listen)
    lock = None
    if sys.platform == "linux":
        lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            lock.bind(f"\0makima-server:{address.port}")
        except OSError as exc:
            lock.close()
            problem = f"{address}: address already in use by another makima-server --workers"
            raise SettingError("listen", problem, exit_code=EXIT_FAILURE) from exc
    try:
        _check_bindable(address, reuse_port=True)
    except SettingError:
        if lock is not None:
            lock.close()
        raise
    return lock


async def serve(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully."""
    app = await start(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down", extra={"grace_seconds": settings.shutdown_grace})
    await app.stop(settings.shutdown_grace)
    log.info("stopped")
