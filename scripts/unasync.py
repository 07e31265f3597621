"""Generate the blocking client (`makima/client/_sync.py`) from the async one (`_async.py`).

The client is written once, for grpc.aio; the blocking one is the same code with the async
keywords and types rewritten, as httpcore generates its sync code with its `unasync` script.
The rules are plain text substitutions, so `_async.py` is written to make them hold: what has
no rule here (a construct of its own) must not appear there. ruff then drops the imports the
rewrite left unused, turns loops that only yield into `yield from` and formats the result, so the
file reads as if written by hand.

`python scripts/unasync.py --check` fails when the committed `_sync.py` is stale (`make lint`).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "clients" / "python" / "makima" / "client"
SOURCE, TARGET = CLIENT / "_async.py", CLIENT / "_sync.py"
HEADER = "# Generated from _async.py by scripts/unasync.py: edit _async.py, then run `make unasync`.\n"

# In order: names and docstrings first, then types, then keywords.
RULES: list[tuple[str, str]] = [
    (
        r'^"""The grpc\.aio client: .*"""$',
        '"""The blocking client: the calls of the grpc.aio one in _async.py, over a synchronous channel."""',
    ),
    (r"grpc\.aio client of", "Blocking client of"),
    (r"\bAsync(Unary|Paged|TimelineFollower|Client)\b", r"\1"),
    # ruff's ASYNC109 and the comment that explains it concern async code only.
    (r"  # noqa: ASYNC109", ""),
    (r"^# `timeout` parameters \(ruff ASYNC109\).*\n^# server, .*\n", ""),
    (r"\bAsyncGenerator\[([^\]]+), None\]", r"Generator[\1, None, None]"),
    (r"\bAsyncGenerator\b", "Generator"),
    (r"(Iterable\[[\w.]+\]) \| AsyncIterable\[[\w.]+\]", r"\1"),
    (r"\bAsyncIterator\b", "Iterator"),
    (r"\bAsyncIterable\b", "Iterable"),
    (r"\bAwaitable\[(\w+)\]", r"\1"),
    (r"\b__aiter__\b", "__iter__"),
    (r"\b__aenter__\b", "__enter__"),
    (r"\b__aexit__\b", "__exit__"),
    (r"\baio\.(\w+_channel)\b", r"grpc.\1"),
    (r"\baio\.EOF\b", "None"),
    (r"\bawait call\.read\(\)", "next(call, None)"),
    (r"\basyncio\.sleep\(", "time.sleep("),
    (r"\basyncio\.to_thread\(([\w.]+)\)", r"\1()"),
    (r"\basyncio\.to_thread\(([\w.]+), ", r"\1("),
    (r"\basync (def|for|with)\b", r"\1"),
    (r"\bawait ", ""),
]


def unasync(text: str) -> str:
    for pattern, replacement in RULES:
        text = re.sub(pattern, replacement, text, flags=re.MULTILINE)
    return HEADER + text


def generate() -> str:
    """The blocking client's source, rewritten from _async.py and tidied by ruff."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "_sync.py"
        out.write_text(unasync(SOURCE.read_text()))
        ruff = [sys.executable, "-m", "ruff"]
        config = ["--config", str(ROOT / "pyproject.toml")]
        # Unused imports, their order, and `for x in y: yield x` as `yield from y`.
        tidy = ["--fix", "--unsafe-fixes", "--select", "F401,I,UP028"]
        subprocess.run([*ruff, "check", *config, "--quiet", *tidy, str(out)], check=True)
        subprocess.run([*ruff, "format", *config, "--quiet", str(out)], check=True)
        return out.read_text()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if _sync.py is not what _async.py generates")
    args = parser.parse_args(argv)
    text = generate()
    if args.check:
        if TARGET.read_text() != text:
            raise SystemExit(f"{TARGET.relative_to(ROOT)} is stale: run `make unasync`")
        return
    TARGET.write_text(text)


if __name__ == "__main__":
    main()
