"""Helpers that more than one test module uses, in one place (fixtures stay in the conftest files).

Test modules import helpers only from here: ``tests.support`` (constants, ports), ``.servers``
(apps under uvicorn, in a thread or a process; a throw-away PostgreSQL), ``.data`` (tiny data, a
served window), ``.fakes`` (a fake model and registry for serving's unit tests),
``.rollout_models`` (the deliberately bad challengers) and ``.history`` (monitors racing to claim
drift windows, for each ledger backend). This module stays light: a served app's child process
imports it when it unpickles a model from ``.rollout_models``.
"""

from __future__ import annotations

import socket
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The serving app refuses to start without the /feedback token (serving.require_token): every app
# the tests build, in process or in a subprocess, reads this one (tests/conftest.py exports it), and
# clients send AUTH.
API_TOKEN = "test-api-token"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def free_port() -> int:
    """A loopback port that was free a moment ago (for a server that only takes a port number)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bound_socket(port: int = 0) -> socket.socket:
    """A listening-ready socket on 127.0.0.1 (a free port by default; handed to uvicorn, so no
    port race)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock
