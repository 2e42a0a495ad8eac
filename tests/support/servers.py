"""Real servers for the tests: an app under uvicorn on a free loopback port, in a background
thread or in its own process (``tests/integration/serve_app.py`` on a real registry), and a
throw-away PostgreSQL."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

from driftloop.ops.simulator import wait_ready
from tests.support import ROOT, bound_socket, free_port

SERVE_APP = ROOT / "tests" / "integration" / "serve_app.py"


@contextmanager
def serve_in_thread(app, startup_timeout_s: float = 60.0, port: int = 0) -> Iterator[str]:
    """Run ``app`` under uvicorn in a background thread; yields its base URL."""
    sock = bound_socket(port)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn exited during startup")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise TimeoutError(f"uvicorn did not start in {startup_timeout_s}s")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@contextmanager
def serve_in_subprocess(
    tracking_uri: str, model_name: str, log_root: Path, reload_interval_s: float = 0.5, startup_timeout_s: float = 90.0
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run ``serve_app.py`` (the app on the registry) in its own process; yields (URL, process)."""
    # fsync rarely: after a SIGKILL only the kernel's copy of each line may save it, which is
    # what the crash test must show.
    settings = {"reload_interval_s": reload_interval_s, "fsync_interval_s": 60}
    args = [tracking_uri, model_name, str(log_root), json.dumps(settings)]
    with serve_script(SERVE_APP, args, log_root, startup_timeout_s) as served:
        yield served


@contextmanager
def serve_script(
    script: Path, args: list[str], log_root: Path, startup_timeout_s: float = 90.0
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run a serving ``script`` that binds port 0 and prints ``PORT <n>``; yields (URL, process)."""
    # mlflow exports its current URIs into os.environ; the child gets the store only by argv,
    # and runs in the log folder so nothing can land in the repository.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.Popen(
        [sys.executable, str(script), *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=log_root,
        env=env,
    )
    try:
        # The child binds port 0 itself and prints the port it got: no race for a port.
        line = read_line(proc, startup_timeout_s)
        if not line.startswith("PORT "):
            raise RuntimeError(f"{script.name} printed {line!r} instead of its port")
        url = f"http://127.0.0.1:{int(line.split()[1])}"
        wait_ready(url, startup_timeout_s, proc)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        if proc.stdout:
            proc.stdout.close()


def read_line(proc: subprocess.Popen, timeout_s: float) -> str:
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    if not box:
        raise TimeoutError(f"serve_app.py printed nothing in {timeout_s}s (exit code {proc.poll()})")
    return box[0].strip()


@contextmanager
def throwaway_postgres() -> Iterator[Any]:
    """A PostgreSQL of its own on a free loopback port, set up exactly as `driftloop stack up` sets
    up the stack's (``initdb`` in a temporary folder, ``pg_ctl start``, the databases ``mlflow``,
    ``prefect`` and ``driftloop``), stopped and deleted afterwards. Yields the
    :class:`driftloop.ops.stack.Stack`: ``history_dsn`` and ``secrets.pg_password`` reach it."""
    from driftloop.config.settings import StackSettings
    from driftloop.ops import stack as stack_mod

    # PostgreSQL runs as the 'postgres' user when the suite runs as root: its folder must be
    # reachable by that user (pytest's tmp folders are private).
    root = Path(tempfile.mkdtemp(prefix="driftloop-pg-"))
    root.chmod(0o755)
    cfg = StackSettings(dir=root, postgres_port=free_port(), services=["postgres"], deploy=False)
    stack = stack_mod.Stack(cfg, ROOT)
    try:
        stack_mod.up(stack, services=["postgres"])
        yield stack
    finally:
        stack_mod.down(stack)
        shutil.rmtree(root, ignore_errors=True)
