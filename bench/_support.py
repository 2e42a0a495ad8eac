"""What more than one benchmark script uses. The scripts run as ``python bench/<name>.py``, so
bench/ is first on sys.path and they import this module as ``_support``."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A loopback port that was free a moment ago (for a server that only takes a port number)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
