"""What more than one benchmark script uses. The scripts run as ``python bench/<name>.py``, so
bench/ is first on sys.path and they import this module as ``_support``."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A loopback port that was free a moment ago (for a server that only takes a port number)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_signing_key() -> None:
    """Model versions are signed: a benchmark that registers in one process and serves from
    another gives every process one key through the environment (a fresh one unless set)."""
    import os

    if not os.environ.get("DRIFTLOOP_SIGNING_KEY"):
        from driftloop.core.signing import generate

        os.environ["DRIFTLOOP_SIGNING_KEY"] = generate().private
