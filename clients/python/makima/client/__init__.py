"""Typed Python client of the makima history & resume service (package makima.v1).

`AsyncClient` (grpc.aio) and `Client` (blocking) expose every RPC of HistoryService,
SupervisorService, TaskForkService and DaemonService as a snake_case call that takes the generated
request message (or its fields as keywords) and returns the generated response. They add what every
caller needs: the API key, deadlines, retries of idempotent calls with one request_id per logical
call, typed errors, iteration across pages and a reconnecting timeline follower.

`Daemon` (makima.client.daemon) is a daemon's work loop over AsyncClient: claim tasks, run a command
for each one, record its output, keep the leases, checkpoint and report; `makima daemon run` runs it.
`DaemonWorktrees` is its side of the tasks' code: materialize the commit a claim names, checkpoint
and upload what the service lacks.
"""

from makima.client._async import AsyncClient, AsyncPaged, AsyncTimelineFollower, AsyncUnary
from makima.client._errors import (
    AbortedError,
    AlreadyExistsError,
    DeadlineExceededError,
    FailedPreconditionError,
    FieldViolation,
    InternalError,
    InvalidArgumentError,
    MakimaError,
    NotFoundError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
)
from makima.client._options import (
    ADDRESS_ENV,
    API_KEY_ENV,
    DEFAULT_ADDRESS,
    DEFAULT_TIMEOUT,
    TLS_CA_ENV,
    TLS_CERT_ENV,
    TLS_KEY_ENV,
    RetryPolicy,
    Tls,
)
from makima.client._sync import Client, Paged, TimelineFollower, Unary
from makima.client.daemon import Daemon, DaemonConfig, TaskSetupError, WorktreeProvider
from makima.client.worktrees import DaemonWorktrees

__all__ = [
    "ADDRESS_ENV",
    "API_KEY_ENV",
    "DEFAULT_ADDRESS",
    "DEFAULT_TIMEOUT",
    "TLS_CA_ENV",
    "TLS_CERT_ENV",
    "TLS_KEY_ENV",
    "AbortedError",
    "AlreadyExistsError",
    "AsyncClient",
    "AsyncPaged",
    "AsyncTimelineFollower",
    "AsyncUnary",
    "Client",
    "Daemon",
    "DaemonConfig",
    "DaemonWorktrees",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "FieldViolation",
    "InternalError",
    "InvalidArgumentError",
    "MakimaError",
    "NotFoundError",
    "Paged",
    "ResourceExhaustedError",
    "RetryPolicy",
    "TaskSetupError",
    "TimelineFollower",
    "Tls",
    "Unary",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "WorktreeProvider",
]
