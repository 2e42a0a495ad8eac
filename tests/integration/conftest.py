"""Real servers for the integration tests: uvicorn on a free loopback port, a real MLflow registry
on SQLite, tiny real models."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import uvicorn

from driftloop.simulator import wait_ready

ROOT = Path(__file__).resolve().parents[2]
TINY_PARAMS = {"char_min_df": 1}


def bound_socket(port: int = 0) -> socket.socket:
    """A listening-ready socket on 127.0.0.1 (a free port by default; handed to uvicorn, so no
    port race)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


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
    script = Path(__file__).with_name("serve_app.py")
    # mlflow exports its current URIs into os.environ; the child gets the store only by argv,
    # and runs in the log folder so nothing can land in the repository.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.Popen(
        [sys.executable, str(script), tracking_uri, model_name, str(log_root), str(reload_interval_s)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=log_root,
        env=env,
    )
    try:
        # The child binds port 0 itself and prints the port it got: no race for a port.
        line = _readline(proc, startup_timeout_s)
        if not line.startswith("PORT "):
            raise RuntimeError(f"serve_app.py printed {line!r} instead of its port")
        url = f"http://127.0.0.1:{int(line.split()[1])}"
        wait_ready(url, startup_timeout_s, proc)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        if proc.stdout:
            proc.stdout.close()


def _readline(proc: subprocess.Popen, timeout_s: float) -> str:
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    if not box:
        raise TimeoutError(f"serve_app.py printed nothing in {timeout_s}s (exit code {proc.poll()})")
    return box[0].strip()


def tiny_frame(train: pd.DataFrame, labels: list[str], per_label: int = 8) -> pd.DataFrame:
    """``per_label`` rows of each label: a real model in well under a second."""
    parts = [train[train["label"] == label].head(per_label) for label in labels]
    return pd.concat(parts, ignore_index=True)


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory) -> str:
    """One MLflow SQLite store for the session; each test module registers its own model name."""
    root = tmp_path_factory.mktemp("mlflow")
    return f"sqlite:///{root}/mlflow.db"


@pytest.fixture(scope="session")
def artifact_root(tracking_uri, tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mlartifacts")
