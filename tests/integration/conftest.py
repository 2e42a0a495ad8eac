"""Fixtures for the integration tests: one real MLflow registry on SQLite for the session, and the
real stack that test_stack_auth.py and test_stack.py share (the servers and tiny data they use
are in tests/support)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.support import ROOT, free_port

# The shared stack's ports, beside the defaults so a developer's own stack can keep running.
# SeaweedFS's ports move with s3_port: 7133 keeps all of them (up to the admin gRPC port,
# 32446) below the ephemeral range that the suite's free-port tests draw from.
STACK_PORTS = {
    "postgres_port": 15433,
    "s3_port": 7133,
    "mlflow_port": 15000,
    "prefect_port": 14300,
    "prometheus_port": 19090,
}


@pytest.fixture(scope="session")
def real_stack():
    """The whole stack (PostgreSQL, SeaweedFS, MLflow, Prefect with its worker, Prometheus), started
    by `driftloop.ops.stack` on 127.0.0.1 once for the session: test_stack_auth.py and test_stack.py
    each bring back whatever is down when they begin (`up` is idempotent), and test_stack.py stops
    it when it ends (its last test leaves MLflow down). Starting it costs about a minute and a half
    of the suite, so it is started once."""
    from driftloop.config.settings import StackSettings
    from driftloop.ops import stack as stack_mod

    # PostgreSQL runs as the 'postgres' user when the suite runs as root: its folder must be
    # reachable by that user (pytest's tmp folders are private).
    root = Path(tempfile.mkdtemp(prefix="driftloop-stack-"))
    root.chmod(0o755)
    # deploying is test_prefect_deployments' part
    cfg = StackSettings(dir=root, work_pool="driftloop-test", deploy=False, **STACK_PORTS)
    st = stack_mod.Stack(cfg, ROOT, serving_port=18000)
    saved = {k: os.environ.pop(k, None) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    try:
        yield st
    finally:
        stack_mod.down(st)
        for key, value in saved.items():
            if value is not None:
                os.environ[key] = value
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory) -> str:
    """One MLflow SQLite store for the session; each test module registers its own model name."""
    root = tmp_path_factory.mktemp("mlflow")
    return f"sqlite:///{root}/mlflow.db"


@pytest.fixture(scope="session")
def artifact_root(tracking_uri, tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mlartifacts")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` (SQLite, artifacts proxied from a local folder) on a free port."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    log = open(root / "server.log", "wb")  # noqa: SIM115  closed below
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{root}/mlflow.db",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("mlflow server did not start in 120s")
            time.sleep(0.3)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
