"""The loop on the real stack: PostgreSQL, SeaweedFS (S3), an MLflow server on PostgreSQL with
artifacts in S3, a Prefect server on PostgreSQL with a process worker, Prometheus — all started
by `driftloop.ops.stack` on 127.0.0.1 (ports beside the defaults, so a developer's own stack can
keep running; shared with test_stack_auth.py, tests/integration/conftest.py) and stopped at the
end. Then each server is stopped in the middle of a flow."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from driftloop.ops import stack as stack_mod
from tests.support import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(real_stack):
    """The session's stack (tests/integration/conftest.py), every server up; stopped at the end of
    this module, whose last test leaves MLflow down."""
    real_stack.statuses = stack_mod.up(real_stack)
    try:
        yield real_stack
    finally:
        stack_mod.down(real_stack)


@pytest.fixture
def on_stack(stack, tmp_path, monkeypatch):
    """This test's flows use the stack: a config overlay, training's credentials (S3 keys, MLflow
    user, the history's PostgreSQL password, the Prefect auth string), its Prefect server, the
    champion history and trigger ledger in a schema of this test's own."""
    from prefect.settings import (
        PREFECT_API_AUTH_STRING,
        PREFECT_API_URL,
        PREFECT_CLIENT_RETRY_EXTRA_CODES,
        temporary_settings,
    )

    overlay = tmp_path / "stack-test.yaml"
    overlay.write_text(
        f"registry:\n  tracking_uri: {stack.mlflow_url}\n  model_name: router-{tmp_path.name[-12:]}\n"
        f"prefect:\n  api_url: {stack.prefect_api_url}\n"
        f"storage:\n  dvc_remote: s3://{stack.cfg.bucket}/dvc/{tmp_path.name[-12:]}\n"
        f"  s3_endpoint_url: {stack.s3_url}\n"
        f"history:\n  backend: postgres\n  dsn: {stack.history_dsn}\n"
        f"  db_schema: t_{re.sub(r'[^a-z0-9_]', '_', tmp_path.name[-12:].lower())}\n"
    )
    monkeypatch.setenv("DRIFTLOOP_CONFIG", str(overlay))
    monkeypatch.setenv("DRIFTLOOP__PROJECT__STATE_DIR", str(tmp_path / "state"))
    for key, value in stack.client_env().items():
        monkeypatch.setenv(key, value)
    # A refused MLflow call surfaces at once, so the Prefect task's own retries do the waiting.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    # what `driftloop` sets for every Prefect client (prefect_server.CLIENT_RETRIES)
    updates = {
        PREFECT_API_URL: stack.prefect_api_url,
        PREFECT_API_AUTH_STRING: stack.secrets.prefect_auth_string,
        PREFECT_CLIENT_RETRY_EXTRA_CODES: {500},
    }
    with temporary_settings(updates=updates):
        yield stack


def _listening(pids: set[int]) -> list[str]:
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=False).stdout
    found = []
    for line in out.splitlines():
        owners = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if owners & pids:
            found.append(line.split()[3])
    return found


def _group_pids(leaders: list[int]) -> set[int]:
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) in leaders:
                    pids.add(int(entry))
            except ProcessLookupError:
                continue
    return pids


def test_up_starts_every_server_on_loopback_and_is_safe_to_run_twice(stack):
    assert [s.name for s in stack.statuses] == stack_mod.ORDER
    assert all(s.healthy for s in stack.statuses)
    again = stack_mod.up(stack)
    assert [s.started_s for s in again] == [None] * len(stack_mod.ORDER)  # nothing restarted
    # every socket our servers listen on is on 127.0.0.1
    leaders = [
        int((stack.path("run", f"{n}.pid")).read_text()) for n in ("s3", "mlflow", "prefect", "worker", "prometheus")
    ]
    pg_pid = int((stack.path("postgres", "postmaster.pid")).read_text().split()[0])
    addresses = _listening(_group_pids(leaders) | {pg_pid})
    assert len(addresses) >= 6 and all(a.startswith("127.0.0.1:") for a in addresses), addresses
    # secrets stay out of the command lines other users can read
    for pid in _group_pids(leaders):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        assert not [name for name, value in stack.secrets.values.items() if value in cmdline], pid
    assert (stack.path("secrets.env").stat().st_mode & 0o777) == 0o600


def _flow_runs(names: list[str]) -> list:
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    async def read():
        async with get_client() as client:
            return await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=names)))

    return asyncio.run(read())


def _s3_keys(stack, prefix: str) -> list[str]:
    client = stack_mod._s3_client(stack)
    keys, token = [], None
    while True:
        kwargs = {"Bucket": stack.cfg.bucket, "Prefix": prefix} | ({"ContinuationToken": token} if token else {})
        page = client.list_objects_v2(**kwargs)
        keys += [o["Key"] for o in page.get("Contents", [])]
        token = page.get("NextContinuationToken")
        if not token:
            return keys


def _pg(stack, sql: str, db: str = "mlflow") -> list[tuple]:
    import psycopg2

    user, password = stack.pg_login(db)  # each database admits its own role only
    conn = psycopg2.connect(host="127.0.0.1", port=stack.cfg.postgres_port, user=user, password=password, dbname=db)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()
    finally:
        conn.close()


def test_the_loop_runs_unchanged_on_the_stack(on_stack, tmp_path):
    from driftloop.adapters import wiring
    from driftloop.adapters.versioning import DatasetStore
    from driftloop.config.settings import load_settings
    from driftloop.flows.monitoring import monitoring
    from driftloop.flows.training import training
    from driftloop.ops import simulator
    from tests.support.data import serve_window

    stack = on_stack
    settings = load_settings()
    assert settings.tracking_uri == stack.mlflow_url and settings.artifact_root is None
    parts = wiring.build(settings)
    v1 = training(reason="v1 on the stack", trigger="test")
    assert v1.champion == v1.candidate and v1.candidate.version == "1"

    known = parts.prepared().read("live_known")
    new = parts.prepared().read("live_new")
    serve_window(parts, simulator.mix(known, new, 400, 0.35, seed=5), "drift", label_share=0.5)
    out = monitoring()
    assert out.drift.drift_detected and out.decision.retrain
    assert out.retrain is not None and out.retrain.decision.promote
    v2 = out.retrain.champion
    assert v2.version == "2" and parts.registry.champion() == v2

    # the registry lives in PostgreSQL ...
    rows = _pg(
        stack, f"SELECT version FROM model_versions WHERE name = '{settings.registry.model_name}' ORDER BY version"
    )
    assert [r[0] for r in rows] == [1, 2]
    aliases = _pg(
        stack, f"SELECT alias, version FROM registered_model_aliases WHERE name = '{settings.registry.model_name}'"
    )
    assert ("champion", 2) in aliases
    # ... the champion history and the trigger ledger too, in the driftloop database (not on this disk) ...
    schema = settings.history.db_schema
    ledger = _pg(stack, f"SELECT window_id FROM {schema}.retrain_triggers ORDER BY seq", db="driftloop")
    assert [r[0] for r in ledger] == [out.drift.window_id]
    moves = _pg(
        stack,
        f"SELECT action, to_version FROM {schema}.champion_history WHERE alias = 'champion' ORDER BY seq",
        "driftloop",
    )
    assert moves == [("promote", "1"), ("promote", "2")]
    assert not settings.history_path.exists() and not settings.trigger_state_path.exists()
    # ... the model files in S3 (through the MLflow server's artifact proxy), signed, no pickle ...
    model_keys = _s3_keys(stack, "mlflow/")
    assert len([k for k in model_keys if k.endswith("artifacts/model/MANIFEST.json")]) >= 2
    assert not [k for k in model_keys if k.endswith((".pkl", ".joblib"))]
    assert parts.registry.version_tags(v2)["model.signature"].startswith("ed25519:")
    # ... and every training set in the DVC remote on S3: a fresh DVC repo pulls v2's back.
    md5 = parts.registry.version_tags(v2)["data.md5"]
    assert any(k.endswith(md5[2:]) for k in _s3_keys(stack, f"dvc/{tmp_path.name[-12:]}/"))
    fresh = DatasetStore(tmp_path / "fresh" / "datasets", settings.storage.dvc_remote, settings.storage.s3_endpoint_url)
    restored = fresh.restore(md5, tmp_path / "restored.csv")
    assert hashlib.md5(restored.read_bytes(), usedforsecurity=False).hexdigest() == md5

    # the runs are on the stack's Prefect server (PostgreSQL), completed
    runs = {
        r.name: r
        for r in _flow_runs(["training", "monitoring", "retraining"])
        if r.parameters.get("reason", "").startswith(("v1 on the stack", "drift")) or r.name.startswith("monitor")
    }
    assert {r.state_type.value for r in runs.values()} == {"COMPLETED"}
    assert len(_pg(stack, "SELECT id FROM flow_run", db="prefect")) >= 4

    # the serving app loads the champion from the MLflow server (artifacts from S3) and answers
    import httpx

    from driftloop.serving.app import create_app
    from tests.support import API_TOKEN
    from tests.support.servers import serve_in_thread

    app = create_app(settings.serving, parts.registry, tmp_path / "serve-logs", api_token=API_TOKEN)
    with serve_in_thread(app, port=stack.serving_port) as url:
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/ready", timeout=5).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        answer = httpx.post(f"{url}/predict", json={"text": "I want to use apple pay"}, timeout=30).json()
        # ... and the stack's Prometheus scrapes it (every 5 s)
        query = 'driftloop_requests_total{job="driftloop-serving"}'
        series: list = []
        while not series and time.monotonic() < deadline + 30:
            time.sleep(1)
            series = httpx.get(f"{stack.prometheus_url}/api/v1/query", params={"query": query}, timeout=5).json()[
                "data"
            ]["result"]
    assert answer["model_version"] == "2"
    assert series and any(s["metric"].get("model_version") == "2" for s in series), series


# ---------------------------------------------------------------- faults


def _outage_mid_flow(stack, server: str, datasets: Path, down_s: float | None) -> threading.Thread:
    """Stop ``server`` once the running flow has versioned its training set (DVC add + push to
    S3: the flow is past its start and before any MLflow call), and start it again ``down_s``
    later (None: leave it down)."""
    marker = datasets / "training.csv.dvc"
    since = marker.stat().st_mtime if marker.exists() else 0.0

    def run() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if marker.exists() and marker.stat().st_mtime > since:
                break
            time.sleep(0.05)
        stack_mod.stop(stack, server)
        if down_s is not None:
            time.sleep(down_s)
            stack_mod.start(stack, server)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> str:
    """12 intents of BANKING77 (2 of them "new"), 80 rows each: trains in a second or two."""
    import pandas as pd

    from driftloop.config.settings import load_settings

    folder = tmp_path_factory.mktemp("small-data")
    new = list(load_settings().data.new_labels[:2])
    paths = {}
    for split in ("train", "test"):
        frame = pd.read_csv(ROOT / f"data/raw/banking77/{split}.csv")
        keep = new + sorted(set(frame["category"]) - set(load_settings().data.new_labels))[:10]
        frame = frame[frame["category"].isin(keep)].groupby("category").head(80 if split == "train" else 30)
        paths[split] = folder / f"{split}.csv"
        frame.to_csv(paths[split], index=False)
    overlay = folder / "small.yaml"
    overlay.write_text(f"data:\n  train_path: {paths['train']}\n  test_path: {paths['test']}\n  new_labels: {new}\n")
    return str(overlay)


@pytest.fixture
def with_champion(on_stack, small_data, tmp_path, monkeypatch):
    """A champion (v1) on small data and a second training set (9/10 of v1's); each fault test
    then trains v2 on it."""
    from driftloop.adapters import wiring
    from driftloop.config.settings import load_settings
    from driftloop.data.dataset import write_labelled
    from driftloop.flows.training import training

    monkeypatch.setenv("DRIFTLOOP_CONFIG", os.environ["DRIFTLOOP_CONFIG"] + "," + small_data)
    v1 = training(reason="v1", trigger="test")
    parts = wiring.build(load_settings())
    extra = tmp_path / "v2.csv"
    write_labelled(parts.prepared().read("train").sample(frac=0.9, random_state=4), extra)
    return parts, v1.candidate, extra


def _train_v2(extra: Path):
    from driftloop.flows.training import training

    return training(training_set=str(extra), reason="v2 during an outage", trigger="test", return_state=True)


def _versions(parts) -> list[str]:
    return sorted(
        v.version for v in parts.registry.client.search_model_versions(f"name = '{parts.registry.model_name}'")
    )


# How long each stays away: SeaweedFS restarts in a second or two, and the MLflow server's own S3
# client retries a few seconds by itself, so a shorter S3 outage never reaches our tasks.
@pytest.mark.parametrize(("server", "down_s"), [("mlflow", 2), ("s3", 12), ("postgres", 4)])
def test_a_server_that_comes_back_is_ridden_out_by_task_retries(with_champion, on_stack, server, down_s, caplog):
    """The server goes away in the middle of the flow and is back a few seconds later: the task
    that needs it retries, the run completes, v2 is registered once and judged as usual."""
    caplog.set_level(logging.INFO, logger="prefect")
    parts, _v1, extra = with_champion
    outage = _outage_mid_flow(on_stack, server, parts.datasets.root, down_s=down_s)
    state = _train_v2(extra)
    outage.join()
    assert state.is_completed(), state.message
    outcome = state.result()
    assert _versions(parts) == ["1", "2"]  # exactly one new version
    assert outcome.candidate.version == "2"
    # the engine's own word that a task failed and was retried (task runs reach the API as
    # events, which a test process that also used another Prefect server cannot rely on)
    retries = [r.getMessage() for r in caplog.records if re.search(r"Retry \d+/\d+ will start", r.getMessage())]
    assert retries, "no task had to retry: the outage was not in the flow's way"


def test_the_prefect_server_restarting_mid_flow(with_champion, on_stack):
    """The Prefect server goes away while the flow trains and comes back: the run either
    completes (v2 registered once) or fails cleanly (v1 still champion, nothing registered)."""
    parts, v1, extra = with_champion
    restarter = _outage_mid_flow(on_stack, "prefect", parts.datasets.root, down_s=3)
    try:
        state = _train_v2(extra)
        completed = state.is_completed()
    except Exception:  # noqa: BLE001  the engine could not report a state: the run did not finish
        completed = False
    restarter.join()
    if completed:
        assert _versions(parts) == ["1", "2"]
    else:
        assert parts.registry.champion() == v1 and _versions(parts) == ["1"]
    assert stack_mod.healthy(on_stack, "prefect")


def test_a_server_that_stays_down_fails_the_run_cleanly(with_champion, on_stack):
    """MLflow stays down through every retry: the run fails, and the registry (read straight
    from PostgreSQL) still has v1 as champion, no challenger and no half-registered version.
    The last test of the module: the stack is torn down after it, MLflow is not restarted."""
    parts, v1, extra = with_champion
    name = parts.registry.model_name
    outage = _outage_mid_flow(on_stack, "mlflow", parts.datasets.root, down_s=None)
    state = _train_v2(extra)
    outage.join()
    assert state.is_failed()
    assert _pg(on_stack, f"SELECT alias, version FROM registered_model_aliases WHERE name = '{name}'") == [
        ("champion", int(v1.version))
    ]
    assert _pg(on_stack, f"SELECT version FROM model_versions WHERE name = '{name}'") == [(1,)]
