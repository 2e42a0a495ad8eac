"""One clear error per bad input: the real ``driftloop`` command, run as a user runs it.

Each bad input ends in a short report (what is wrong, naming the file, setting, field or URL,
and the flow run it failed in) and its documented exit status (``driftloop --help``), with no
traceback unless --debug asks for one. The flow runs go to one Prefect server for the module;
every command gets a fresh state dir, so nothing prepared by another test can be reused.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from driftloop.core.errors import EXIT_INPUT, EXIT_UNREACHABLE
from driftloop.ops import prefect_server
from tests.support import ROOT, free_port

DRIFTLOOP = str(Path(sys.executable).parent / "driftloop")
TRACEBACK = "Traceback (most recent call last)"
RUN_URL = re.compile(r"^flow run: (http://127\.0\.0\.1:\d+/runs/flow-run/[0-9a-f-]{36})\b", re.M)


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory) -> str:
    """One local Prefect server for every command of this module (as `driftloop train` would start)."""
    server = prefect_server.ensure_server(tmp_path_factory.mktemp("prefect"), free_port())
    yield server.api_url
    prefect_server.stop_server(server, flush=False)  # this process sent it nothing


def driftloop(
    *args: str, state: Path, api_url: str | None = None, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess:
    """``driftloop <args>`` with its output piped, as in a CI log."""
    full = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("DRIFTLOOP__") and k not in ("DRIFTLOOP_CONFIG", "DRIFTLOOP_DEBUG", "PREFECT_API_URL")
    }
    full |= {
        "DRIFTLOOP__PROJECT__STATE_DIR": str(state),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # MLflow's client retries a refused connection for minutes by default.
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    }
    if api_url:
        full["DRIFTLOOP__PREFECT__API_URL"] = api_url
    full |= env
    return subprocess.run(
        [DRIFTLOOP, *args], cwd=ROOT, env=full, capture_output=True, text=True, timeout=timeout, check=False
    )


def lines(done: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]


def overlay(tmp_path: Path, text: str) -> str:
    path = tmp_path / "overlay.yaml"
    path.write_text(text)
    return str(path)


def _closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # bound and released: nothing listens there


# (id, overlay text, files to write, what the error must name). {tmp} is the test's folder.
FLOW_CASES = [
    (
        "missing-file",
        "data:\n  train_path: {tmp}/nonexistent.csv\n",
        {},
        ["{tmp}/nonexistent.csv: file not found", "data.train_path"],
    ),
    (
        "malformed-csv",
        "data:\n  train_path: {tmp}/bad.csv\n",
        {"bad.csv": 'text,category\n"an unterminated quote,card_arrival\nhello,greeting\n'},
        ["{tmp}/bad.csv: cannot parse", "EOF inside string"],
    ),
    (
        "empty-data-set",
        "data:\n  train_path: {tmp}/empty.csv\n",
        {"empty.csv": "text,category\n"},
        ["{tmp}/empty.csv: no rows"],
    ),
    (
        "unknown-label-column",
        "data:\n  label_field: nope\n",
        {},
        ["data/raw/", "missing field(s) ['nope']", "data.label_field"],
    ),
]


@pytest.mark.parametrize("case", FLOW_CASES, ids=[c[0] for c in FLOW_CASES])
def test_bad_input_in_a_flow_run_is_one_clear_error(case, prefect_api, tmp_path):
    _, text, files, named = case
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    config = overlay(tmp_path, text.format(tmp=tmp_path))
    named = [n.format(tmp=tmp_path) for n in named]

    done = driftloop("train", "-c", config, state=tmp_path / "state", api_url=prefect_api)
    out = lines(done)
    report = "\n".join(out)
    assert done.returncode == EXIT_INPUT, report
    assert TRACEBACK not in report
    # Prefect's start and end lines of the run (and MLflow's on a fresh store), then the error once.
    assert len(out) <= 8, report
    error = [line for line in out if line.startswith("error: ")]
    assert len(error) == 1 and all(n in error[0] for n in named), report
    # ... with the flow run it failed in, the one whose log on the server has the traceback.
    run = RUN_URL.search(done.stderr)
    assert run and run.group(1).startswith(prefect_api.removesuffix("/api")), report
    logs = httpx.post(
        f"{prefect_api}/logs/filter",
        json={"logs": {"flow_run_id": {"any_": [run.group(1).rsplit("/", 1)[1]]}}},
        timeout=30,
    ).json()
    assert any(TRACEBACK in log["message"] for log in logs), [log["message"][:80] for log in logs]

    debug = driftloop("--debug", "train", "-c", config, state=tmp_path / "state-debug", api_url=prefect_api)
    assert debug.returncode == EXIT_INPUT
    assert TRACEBACK in debug.stderr and debug.stderr.count(named[0]) >= 2, debug.stderr


SETTINGS_CASES = [
    ("unknown-key", "monitor:\n  windw: 3\n", ["monitor.windw", "unknown setting", "overlay.yaml"]),
    (
        "wrong-type",
        'monitor:\n  window_size: "abc"\n',
        ["monitor.window_size", "'abc'", "overlay.yaml", "valid integer"],
    ),
]


@pytest.mark.parametrize("case", SETTINGS_CASES, ids=[c[0] for c in SETTINGS_CASES])
def test_wrong_setting_is_named_before_anything_starts(case, tmp_path):
    _, text, named = case
    config = overlay(tmp_path, text)
    done = driftloop("train", "-c", config, state=tmp_path / "state")
    out = lines(done)
    assert done.returncode == EXIT_INPUT, out
    assert out == [out[0]] and out[0].startswith("error: configuration: "), out
    assert all(n in out[0] for n in named), out
    assert not (tmp_path / "state").exists()  # refused before any server or store was touched

    debug = driftloop("train", "-c", config, state=tmp_path / "state", DRIFTLOOP_DEBUG="1")
    assert debug.returncode == EXIT_INPUT and TRACEBACK in debug.stderr and "ValidationError" in debug.stderr


def test_unreachable_registry_names_its_url(tmp_path):
    url = _closed_port_url()
    config = overlay(tmp_path, f"registry:\n  tracking_uri: {url}\n")
    done = driftloop("rollout", "status", "-c", config, state=tmp_path / "state")
    out = lines(done)
    assert done.returncode == EXIT_UNREACHABLE, out
    assert out == [
        f"error: cannot reach the MLflow tracking server (registry.tracking_uri) at {url}: connection refused"
    ], out

    debug = driftloop("--debug", "rollout", "status", "-c", config, state=tmp_path / "state")
    assert debug.returncode == EXIT_UNREACHABLE
    assert TRACEBACK in debug.stderr and "ConnectionRefusedError" in debug.stderr


def test_serve_takes_host_and_port_through_the_settings(tmp_path):
    refused = driftloop("serve", "--host", "0.0.0.0", state=tmp_path / "state")
    assert refused.returncode == EXIT_INPUT
    assert lines(refused) == [
        "error: configuration: serving.host = '0.0.0.0' (from --host): binding every "
        "interface needs DRIFTLOOP_ALLOW_PUBLIC_BIND=1"
    ]
    wrong = driftloop("serve", "--port", "70000", state=tmp_path / "state")
    assert wrong.returncode == EXIT_INPUT and "serving.port = 70000 (from --port)" in wrong.stderr

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLOOP__")}
    env |= {"DRIFTLOOP__PROJECT__STATE_DIR": str(tmp_path / "state")}
    proc = subprocess.Popen(
        [DRIFTLOOP, "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "serve --port never answered on its port"
            time.sleep(0.3)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
    assert f"on http://127.0.0.1:{port}" in out
