"""Contexts of the `makima` command line: named connection settings (address, key, TLS files) kept
in `$XDG_CONFIG_HOME/makima/config.toml` (default `~/.config/makima/config.toml`), as kubectl keeps
its contexts, so that switching servers is one `makima config use-context NAME`.

The file holds API keys: it is written with mode 0600, and keys are never printed back.
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

CONFIG_HOME_ENV = "XDG_CONFIG_HOME"
CONTEXT_ENV = "MAKIMA_CONTEXT"
# What a context may set. The tls_* files are kept for the client's TLS options.
FIELDS = ("address", "api_key", "tls_ca", "tls_cert", "tls_key")


class ConfigError(Exception):
    """The config file cannot be read, or names a context that is not there."""


@dataclass
class Config:
    """The file's content: the current context's name and every context's settings."""

    current_context: str = ""
    contexts: dict[str, dict[str, str]] = field(default_factory=dict)


def config_path() -> Path:
    base = os.environ.get(CONFIG_HOME_ENV) or str(Path.home() / ".config")
    return Path(base) / "makima" / "config.toml"


def load() -> Config:
    """The config file, or an empty config when there is none."""
    path = config_path()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return Config()
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from None
    current = data.get("current-context", "")
    contexts = data.get("contexts", {})
    if not isinstance(current, str) or not isinstance(contexts, dict):
        raise ConfigError(f"{path}: current-context must be a string and contexts a table")
    parsed: dict[str, dict[str, str]] = {}
    for name, settings in contexts.items():
        if not isinstance(settings, dict) or not all(
            key in FIELDS and isinstance(value, str) for key, value in settings.items()
        ):
            raise ConfigError(f"{path}: context {name!r} may only set strings among {', '.join(FIELDS)}")
        parsed[name] = settings
    return Config(current, parsed)


def save(config: Config) -> Path:
    """Write the config file (0600: it holds keys) in one rename, so a reader never sees half of it."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    # JSON strings are valid TOML basic strings, which saves a TOML writer for three kinds of line.
    lines = [f"current-context = {json.dumps(config.current_context)}"]
    for name, settings in sorted(config.contexts.items()):
        lines += ["", f"[contexts.{json.dumps(name)}]"]
        lines += [f"{key} = {json.dumps(value)}" for key, value in sorted(settings.items())]
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("\n".join(lines) + "\n")
    partial.replace(path)
    return path


def selected(config: Config, name: str | None) -> dict[str, str]:
    """The settings of the context named by --context, else MAKIMA_CONTEXT, else the current one;
    empty when none is chosen."""
    chosen = name or os.environ.get(CONTEXT_ENV) or config.current_context
    if not chosen:
        return {}
    if chosen not in config.contexts:
        raise ConfigError(f"no context {chosen!r} in {config_path()} (known: {', '.join(config.contexts) or 'none'})")
    return config.contexts[chosen]
