"""Metrics (Prometheus) and traces (OpenTelemetry): both off unless asked for, and free when off.

Metrics are on with `--metrics-listen`: `METRICS` is then set, and every hook in the code is one
`is not None` check otherwise; prometheus_client is not even imported. With `serve --workers N`
the parent process points PROMETHEUS_MULTIPROC_DIR at a directory it empties first, each worker
records into files there, and the parent serves the sum (prometheus_client's multiprocess mode).

Traces are on when the standard variables say so (`OTEL_TRACES_EXPORTER=console`, or `otlp` with
the OTLP exporter package installed; `OTEL_SDK_DISABLED=true` wins): a span per RPC and per
database statement, with `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` on the resource.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import event

from makima.server.config import EXIT_FAILURE, SettingError, parse_listen

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from sqlalchemy.ext.asyncio import AsyncEngine

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Seconds between samples of the pending-task queue and the database pool.
SAMPLE_SECONDS = 2.0
# Lag buckets, in timeline events a stream is behind the owner's newest cursor when it wakes.
_LAG_BUCKETS = (0, 1, 2, 5, 10, 50, 100, 500, 1000, 5000, float("inf"))


class Metrics:
    """The service's Prometheus metrics, in the default registry (or multiprocess files)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.rpcs = Counter("makima_rpcs", "RPCs handled, by method and status code", ["method", "code"])
        self.latency = Histogram("makima_rpc_duration_seconds", "RPC latency, by method", ["method"])
        self.streams = Gauge(
            "makima_open_streams", "Server streams open now, by method", ["method"], multiprocess_mode="livesum"
        )
        self.lag = Histogram(
            "makima_stream_lag_events",
            "How many events a timeline stream was behind the owner's newest cursor when it woke",
            buckets=_LAG_BUCKETS,
        )
        self.claims = Counter("makima_task_claims", "Tasks handed to daemons by ClaimTask")
        self.lease_expiries = Counter("makima_lease_expiries", "Running tasks interrupted because their lease expired")
        self.pending = Gauge(
            "makima_pending_tasks", "Tasks waiting for a daemon, all owners", multiprocess_mode="livemax"
        )
        self.pool_in_use = Gauge(
            "makima_db_pool_connections_in_use",
            "Database connections checked out of the pool",
            multiprocess_mode="livesum",
        )
        self.pool_size = Gauge(
            "makima_db_pool_size", "Database connections the pool holds open", multiprocess_mode="livesum"
        )


METRICS: Metrics | None = None


def enable_metrics() -> Metrics:
    """Record metrics in this process from now on (once per process)."""
    global METRICS
    if METRICS is None:
        METRICS = Metrics()
    return METRICS


def serve_metrics(listen: str) -> Callable[[], None]:
    """Serve /metrics on `listen` from a thread of this process: this process's metrics, or with
    PROMETHEUS_MULTIPROC_DIR set the sum over every worker. SettingError when it cannot bind."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    address = parse_listen(listen)
    registry = None
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    try:
        if registry is None:
            server, thread = start_http_server(address.port, addr=address.host)
        else:
            server, thread = start_http_server(address.port, addr=address.host, registry=registry)
    except OSError as exc:
        problem = f"cannot serve metrics on {address}: {(exc.strerror or str(exc)).lower()}"
        raise SettingError("metrics_listen", problem, exit_code=EXIT_FAILURE) from exc

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join()

    return stop


class MultiprocessDir:
    """The directory the workers of one `serve --workers N` write their metrics to.

    PROMETHEUS_MULTIPROC_DIR if the operator set it, else a fresh temporary one (removed at the
    end). Emptied first: files of an earlier run would add their counts to this one's.
    """

    def __init__(self) -> None:
        given = os.environ.get(MULTIPROC_ENV)
        self._made = given is None
        self.path = Path(given) if given else Path(tempfile.mkdtemp(prefix="makima-metrics-"))
        self.path.mkdir(parents=True, exist_ok=True)
        for stale in self.path.glob("*.db"):
            stale.unlink()
        os.environ[MULTIPROC_ENV] = str(self.path)

    def worker_exited(self, pid: int) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, str(self.path))

    def close(self) -> None:
        if self._made:
            shutil.rmtree(self.path, ignore_errors=True)


def trace_database(engine: AsyncEngine, provider: TracerProvider) -> None:
    """A client span per statement on `engine`, a child of the RPC's span (SQLAlchemy's events carry
    the caller's context through its greenlets).

    opentelemetry-instrumentation-sqlalchemy would do this, but refuses SQLAlchemy 2.1 (it declares
    < 2.1.0); these three event hooks are all it takes. Statements only, never their parameters.
    """
    from opentelemetry.trace import SpanKind, Status, StatusCode

    tracer = provider.get_tracer("makima.server.store")
    system = engine.dialect.name

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def begin(_conn: Any, _cursor: Any, statement: str, _params: Any, context: Any, _many: bool) -> None:
        operation = statement.split(None, 1)[0].upper() if statement.strip() else "SQL"
        context._makima_span = tracer.start_span(
            f"{operation} {system}",
            kind=SpanKind.CLIENT,
            attributes={"db.system": system, "db.statement": statement, "db.operation": operation},
        )

    @event.listens_for(engine.sync_engine, "after_cursor_execute")
    def end(_conn: Any, _cursor: Any, _statement: str, _params: Any, context: Any, _many: bool) -> None:
        span = getattr(context, "_makima_span", None)
        if span is not None:
            span.end()

    @event.listens_for(engine.sync_engine, "handle_error")
    def failed(error: Any) -> None:
        span = getattr(error.execution_context, "_makima_span", None)
        if span is not None:
            span.set_status(Status(StatusCode.ERROR, type(error.original_exception).__name__))
            span.end()


def tracer_provider_from_env() -> TracerProvider | None:
    """The tracer provider the OTEL_* variables ask for; None when tracing is off.

    SettingError names OTEL_TRACES_EXPORTER when it asks for an exporter that is not here.
    """
    exporter_names = [
        name.strip().lower() for name in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",") if name.strip()
    ]
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true" or exporter_names in ([], ["none"]):
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or "makima-server"})
    provider = TracerProvider(resource=resource)
    for name in exporter_names:
        exporter: SpanExporter
        if name == "console":
            exporter = ConsoleSpanExporter()
        elif name == "otlp":
            try:
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            except ImportError as exc:
                raise SettingError(
                    "OTEL_TRACES_EXPORTER", "otlp needs the opentelemetry-exporter-otlp-proto-grpc package"
                ) from exc
            exporter = OTLPSpanExporter()
        else:
            raise SettingError("OTEL_TRACES_EXPORTER", f"must be console, otlp or none, not {name!r}")
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider
