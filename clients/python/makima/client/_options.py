"""Connection defaults and the retry policy shared by the async and the sync client."""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

ADDRESS_ENV = "MAKIMA_ADDRESS"
API_KEY_ENV = "MAKIMA_API_KEY"
TLS_CA_ENV = "MAKIMA_TLS_CA"
TLS_CERT_ENV = "MAKIMA_TLS_CERT"
TLS_KEY_ENV = "MAKIMA_TLS_KEY"
DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 30.0
# The most bytes the service takes in one `pack_chunk` of PushCheckpoint (makima/v1/daemon.proto).
PACK_CHUNK_SIZE = 1 << 20
# Only UNAVAILABLE says "nothing was decided, try again"; every other code is an answer.
RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE})


def resolve_address(address: str | None) -> str:
    """The explicit address, else MAKIMA_ADDRESS, else the local default server."""
    return address or os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS


def auth_metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying the explicit key, else MAKIMA_API_KEY; empty without a key so the
    server answers UNAUTHENTICATED instead of the client guessing."""
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")
    return (("authorization", f"Bearer {key}"),) if key else ()


@dataclass(frozen=True)
class Tls:
    """TLS to the server, as PEM bytes: `ca` verifies the server (None: the system's roots); `cert` and
    `key`, both or neither, are this client's certificate for a server that requires one (mutual TLS)."""

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate needs its key: give both the TLS cert and key, or neither")

    @classmethod
    def resolve(cls, ca: str | None = None, cert: str | None = None, key: str | None = None) -> Tls | None:
        """TLS from the files given, each else the one its MAKIMA_TLS_CA, MAKIMA_TLS_CERT or MAKIMA_TLS_KEY
        variable names; None (plaintext) when none is set. ValueError for a certificate without its
        key, OSError for a file that cannot be read: both before any connection is made."""
        given = (ca, cert, key)
        names = (TLS_CA_ENV, TLS_CERT_ENV, TLS_KEY_ENV)
        paths = [value or os.environ.get(name) or None for value, name in zip(given, names, strict=True)]
        if not any(paths):
            return None
        ca_pem, cert_pem, key_pem = (Path(p).read_bytes() if p else None for p in paths)
        return cls(ca=ca_pem, cert=cert_pem, key=key_pem)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )


@dataclass(frozen=True)
class RetryPolicy:
    """How idempotent calls are retried on UNAVAILABLE: exponential backoff with jitter.

    `max_attempts` counts the first try; None retries without end (what a long-lived timeline
    follower wants while a server restarts).
    """

    max_attempts: int | None = 6
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("backoffs must be >= 0 and multiplier >= 1")

    def backoff(self, attempt: int) -> float | None:
        """Seconds to wait after failed attempt number `attempt` (1-based); None when no attempt is left."""
        if self.max_attempts is not None and attempt >= self.max_attempts:
            return None
        # The exponent is capped so that an endless follower never overflows a float.
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier ** min(attempt - 1, 64))
        # Jitter spreads the retries of many clients that lost the same server at the same moment.
        return random.uniform(ceiling / 2, ceiling)

    def delay_after(self, err: grpc.RpcError, attempt: int, deadline: float | None) -> float | None:
        """Seconds to wait before retrying after `err` ended attempt `attempt`; None to give up (an
        answer that is not UNAVAILABLE, no attempt left, or no time left before `deadline`, a
        time.monotonic() value)."""
        if err.code() not in RETRYABLE_CODES:
            return None
        delay = self.backoff(attempt)
        if delay is None or (deadline is not None and time.monotonic() + delay >= deadline):
            return None
        return delay


DEFAULT_RETRY = RetryPolicy()
