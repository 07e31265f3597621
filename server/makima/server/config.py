"""Server settings: command-line flags with MAKIMA_* environment variables as defaults."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from makima.server.store.engine import DEFAULT_DATABASE_URL

DEFAULT_LISTEN = "127.0.0.1:50051"

# Exit codes of makima-server: a value that is wrong in itself (or a command-line mistake), versus a
# well-formed value the machine refuses (port taken, database unreachable, directory not writable).
EXIT_USAGE = 2
EXIT_FAILURE = 1

# One label of a host name (RFC 1123): letters, digits and inner hyphens, at most 63 characters.
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


class SettingError(Exception):
    """A setting that cannot work, named by its `Settings` field.

    The command line reports it under the name the user wrote (a flag or a MAKIMA_* variable), as
    one line, and exits with `exit_code`: EXIT_USAGE when the value itself is wrong, EXIT_FAILURE
    when a well-formed value is refused by the machine.
    """

    def __init__(self, field: str, problem: str, *, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem
        self.exit_code = exit_code


@dataclass(frozen=True)
class Address:
    """A host and a TCP port to listen on."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(text: str) -> Address:
    """`host:port` with an IPv4 address, a host name or a bracketed IPv6 address; port 0-65535.

    ValueError otherwise. grpc would take `localhost` as port 443 and `:99999` as a random port;
    neither is what anyone meant, so both are refused.
    """
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError(f"must be [IPv6 address]:port, not {text!r}")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise ValueError(f"must be host:port, not {text!r} (the port is missing)")
        if ":" in host:
            raise ValueError(f"an IPv6 address goes in brackets: [{host}]:{port_text}")
        if not _is_host(host):
            raise ValueError(f"{host!r} is neither an IPv4 address nor a host name")
    if not port_text.isascii() or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"the port must be a number from 0 to 65535, not {port_text!r}")
    return Address(host=host, port=int(port_text))


def _is_host(host: str) -> bool:
    if not host or len(host) > 253:
        return False
    labels = host.removesuffix(".").split(".")
    if all(label.isdigit() for label in labels):  # looks numeric: must then be a real IPv4 address
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return False
        return True
    return all(_HOST_LABEL.fullmatch(label) for label in labels)


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
    # Share the port with other processes (SO_REUSEPORT): only for the workers of one `serve --workers N`.
    # Off, a port that another server holds fails to bind instead of silently splitting its calls.
    reuse_port: bool = False
    # How many server processes `serve --workers N` runs (named in the start-up line of each).
    workers: int = 1
    # TLS: the server's certificate chain and key (PEM); None serves plaintext.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Mutual TLS: clients must present a certificate signed by this CA (PEM); needs tls_cert.
    tls_client_ca: Path | None = None
    # Record Prometheus metrics (see telemetry.py).
    metrics: bool = False
    # Where this process serves /metrics; None: nowhere (the parent of `serve --workers N` serves them).
    metrics_listen: str | None = None


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only (plaintext is for those addresses alone)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
