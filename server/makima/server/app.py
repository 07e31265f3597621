"""Assembles the gRPC server: servicers, interceptor, health, reflection, graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from makima.server.api.daemon import DaemonServicer
from makima.server.api.history import HistoryServicer
from makima.server.api.interceptor import ServiceInterceptor
from makima.server.api.supervisor import SupervisorServicer
from makima.server.api.task_fork import TaskForkServicer
from makima.server.config import Settings
from makima.server.domain.auth import Authenticator
from makima.server.domain.objects import ObjectStores
from makima.server.domain.page_tokens import PageTokenKeys
from makima.server.domain.runtime import Runtime
from makima.server.domain.sweeper import LeaseSweeper
from makima.server.domain.workspace import Workspace
from makima.server.store import migrate
from makima.server.store.engine import Database
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

    async def stop(self, grace: float) -> None:
        """Report NOT_SERVING, end live streams, let in-flight calls finish within `grace`, release the rest."""
        await self.health.enter_graceful_shutdown()
        self.hub.close()
        await self.server.stop(grace)
        await self.sweeper.stop()
        if self.listener is not None:
            await self.listener.stop()
        await self.runtime.db.dispose()


async def start(settings: Settings) -> App:
    """Migrate the database, then start serving on `settings.listen` (port 0 picks a free port)."""
    db = Database(settings.database_url)
    await migrate.upgrade(db)
    hub = TimelineHub()
    runtime = Runtime(db, on_commit=hub.publish)
    page_tokens = PageTokenKeys(runtime)
    await page_tokens.load()
    listener = PostgresListener(db.url, hub) if db.dialect == "postgresql" else None
    if listener is not None:
        listener.start()
    workspace = Workspace(settings.workspace_root)
    objects = ObjectStores.for_database(db, workspace_root=workspace.root, cache_dir=settings.object_cache_dir)
    server = aio.server(interceptors=[ServiceInterceptor(Authenticator(runtime))])
    history = HistoryServicer(
        runtime, hub, page_tokens, keep_alive=settings.keep_alive_seconds, recheck=settings.timeline_recheck_seconds
    )
    history_pb2_grpc.add_HistoryServiceServicer_to_server(history, server)
    supervisor_pb2_grpc.add_SupervisorServiceServicer_to_server(SupervisorServicer(runtime, workspace), server)
    task_fork_pb2_grpc.add_TaskForkServiceServicer_to_server(TaskForkServicer(runtime, workspace), server)
    daemon = DaemonServicer(
        runtime, hub, lease_seconds=settings.lease_seconds, recheck=settings.timeline_recheck_seconds
    )
    daemon_pb2_grpc.add_DaemonServiceServicer_to_server(daemon, server)

    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    port = server.add_insecure_port(settings.listen)
    await server.start()
    sweeper = LeaseSweeper(runtime, interval=settings.sweep_seconds)
    sweeper.start()
    log.info("serving", extra={"listen": settings.listen, "port": port, "database": db.url.render_as_string()})
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
    )


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
