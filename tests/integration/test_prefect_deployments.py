"""prefect.yaml against a real Prefect server: `prefect deploy --all`, a process worker, the drift
trigger (one retrain run per window, however often its event arrives), a manual retrain of the
deployment with parameters, and the flow run's page in the Prefect UI (headless Chromium)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from driftloop.adapters import predlog
from driftloop.core.triggers import DRIFT_EVENT, DriftEvent
from driftloop.core.types import Prediction
from driftloop.ops import prefect_server, procs
from tests.support import ROOT, free_port

# Each flow run in the worker pays Prefect's start-up (tens of seconds on 2 shared cores).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
MODEL = "intent-router-deploy-it"
PREFECT = str(Path(sys.executable).parent / "prefect")
DRIFTLOOP = str(Path(sys.executable).parent / "driftloop")


def _project(tmp: Path, banking_train) -> Path:
    """Tiny data (6 intents), a state dir, labelled production rows, and the overlay saying so."""
    labels = sorted(banking_train["label"].unique())[:6]
    rows = banking_train[banking_train["label"].isin(labels)].groupby("label")
    data = tmp / "data"
    data.mkdir()
    rows.head(30).rename(columns={"label": "category"}).to_csv(data / "train.csv", index=False)
    rows.nth(list(range(30, 46))).rename(columns={"label": "category"}).to_csv(data / "test.csv", index=False)
    # Production answers that annotators labelled: what a drift-triggered retrain waits for.
    labelled = rows.nth(list(range(46, 50)))
    state = tmp / "state"
    ids = [f"prod-{i}" for i in range(len(labelled))]
    with predlog.PredictionLog(state / "logs") as log:
        log.write_batch(
            ids, labelled["text"].tolist(), [Prediction(labels[0], 0.4)] * len(ids), "1", 1.0, [1] * len(ids)
        )
    with predlog.FeedbackLog(state / "logs") as fb:
        for rid, label in zip(ids, labelled["label"], strict=True):
            fb.write(rid, label)
    overlay = tmp / "deploy-it.yaml"
    overlay.write_text(
        yaml.safe_dump(
            {
                "project": {"state_dir": str(state)},
                "data": {"train_path": str(data / "train.csv"), "test_path": str(data / "test.csv"), "new_labels": []},
                "model": {"params": {"char_min_df": 1}},
                "registry": {"model_name": MODEL},
                # v1 stays the champion, so every retrain finds the same labelled rows new
                "promotion": {"min_score": 0.3, "min_improvement": 1.0},
                "retrain": {"min_new_labels": 1, "label_wait_timeout_s": 5, "refresh_reference": False},
            }
        )
    )
    return overlay


def _env(api_url: str, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DRIFTLOOP", "MLFLOW_"))}
    return env | prefect_server.prefect_env(home) | {"PREFECT_API_URL": api_url} | extra


def _run(cmd: list[str], env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _query(api_url: str, fn):
    """Run ``await fn(client)`` against the test's server."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def go():
        async with get_client() as client:
            return await fn(client)

    with temporary_settings({PREFECT_API_URL: api_url}):
        return asyncio.run(go())


def _runs_of(api_url: str, flow_name: str) -> list:
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    return _query(api_url, lambda c: c.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name]))))


def _wait(api_url: str, flow_name: str, ready, timeout_s: float, worker: subprocess.Popen) -> list:
    """The flow's runs once ``ready(runs)`` holds."""
    deadline = time.monotonic() + timeout_s
    while True:
        runs = _runs_of(api_url, flow_name)
        if ready(runs):
            return runs
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with {worker.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{flow_name}: {[(r.name, r.state_type) for r in runs]} after {timeout_s}s")
        time.sleep(1)


def _wait_for_pool(api_url: str, worker: subprocess.Popen, timeout_s: float = 120) -> None:
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            _query(api_url, lambda c: c.read_work_pool("driftloop"))
            return
        except ObjectNotFound:
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"no driftloop work pool (worker exit code {worker.poll()})") from None
            time.sleep(1)


def _emit(api_url: str, events: list[tuple[DriftEvent, uuid.UUID]]) -> None:
    from prefect.events import Event
    from prefect.events.clients import PrefectEventsClient

    async def go():
        async with PrefectEventsClient(api_url=api_url) as client:
            for event, event_id in events:
                await client.emit(
                    Event(
                        event=DRIFT_EVENT,
                        id=event_id,
                        payload=event.payload(),
                        resource={"prefect.resource.id": event.resource_id, "prefect.resource.name": event.model_name},
                    )
                )

    asyncio.run(go())


@pytest.fixture(scope="module")
def stack(tmp_path_factory, banking_train):
    """A real Prefect server (free loopback port, temp PREFECT_HOME), prefect.yaml deployed to it,
    and a process worker of the `driftloop` pool whose runs read the test's overlay."""
    tmp = tmp_path_factory.mktemp("deployments")
    overlay = _project(tmp, banking_train)
    home = tmp / "prefect"
    with pytest.MonkeyPatch.context() as mp:
        # The cron schedules are checked on the deployments; no scheduled run may start mid-test.
        mp.setenv("PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED", "false")
        mp.delenv("PREFECT_API_URL", raising=False)
        server = prefect_server.ensure_server(home, free_port())
    worker = None
    try:
        env = _env(server.api_url, home)
        # The worker creates the `driftloop` pool that `prefect deploy` needs; meanwhile the CLI
        # trains v1, the champion every retrain is compared with, against the same server.
        # One run at a time: the runs share one SQLite registry and prepared-data folder.
        worker = subprocess.Popen(
            [PREFECT, "worker", "start", "--pool", "driftloop", "--type", "process", "--limit", "1"],
            cwd=tmp,
            env=_env(
                server.api_url,
                home,
                DRIFTLOOP_CONFIG=str(overlay),
                PREFECT_WORKER_QUERY_SECONDS="1",
                PREFECT_WORKER_PREFETCH_SECONDS="5",
            ),
            stdout=open(tmp / "worker.log", "w"),  # noqa: SIM115  the worker's log, open while it runs
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        train = subprocess.Popen(
            [DRIFTLOOP, "train", "-c", str(overlay), "--reason", "v1"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        _wait_for_pool(server.api_url, worker)
        deployed = _run([PREFECT, "--no-prompt", "deploy", "--all"], env)
        assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
        out, _ = train.communicate(timeout=300)
        assert train.returncode == 0, out[-3000:]
        yield {"server": server, "env": env, "overlay": overlay, "tmp": tmp, "worker": worker}
    finally:
        if worker is not None and worker.poll() is None:
            procs.stop_group(worker, timeout_s=20)
        prefect_server.stop_server(server)


def test_prefect_yaml_deploys_schedules_and_the_drift_trigger(stack):
    from prefect.client.schemas.filters import DeploymentFilter

    api = stack["server"].api_url
    deployments = {d.name: d for d in _query(api, lambda c: c.read_deployments(deployment_filter=DeploymentFilter()))}
    assert {"hourly", "retrain", "on-drift", "daily"} <= set(deployments)
    crons = {name: [s.schedule.cron for s in deployments[name].schedules] for name in ("hourly", "retrain", "daily")}
    assert crons == {"hourly": ["0 * * * *"], "retrain": ["0 3 * * 1"], "daily": ["30 0 * * *"]}
    assert deployments["daily"].entrypoint == "flows/compaction.py:compaction"
    assert deployments["daily"].parameters == {"retention": True, "config": []}
    for d in deployments.values():
        assert d.work_pool_name == "driftloop"
        assert d.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]
    assert deployments["retrain"].parameters["config"] == []
    automations = _query(api, lambda c: c.read_automations())
    drift = [a for a in automations if a.trigger.expect == {DRIFT_EVENT}]
    assert len(drift) == 1 and drift[0].actions[0].deployment_id == deployments["on-drift"].id


def test_one_retrain_run_per_drift_window_and_a_manual_run_with_parameters(stack, tmp_path):
    api, env, worker = stack["server"].api_url, stack["env"], stack["worker"]
    w1 = DriftEvent(
        MODEL, "a1b2c3d4e5f60718", "drift: text_drift, intent_drift", "file:///tmp/drift-w1.html", "1", "monitor-run-1"
    )
    w2 = DriftEvent(MODEL, "0f1e2d3c4b5a6978", "drift: intent_drift, confidence", "", "1", "monitor-run-2")
    # w1 three times: twice with its own (deterministic) id, as a retried emit would, and once with
    # another id, as a second monitor (or a monitor whose ledger was lost) would after the
    # server's 30-minute memory of event ids; w2 once.
    _emit(api, [(w1, w1.id), (w1, w1.id), (w1, uuid.uuid4()), (w2, w2.id)])

    # The manual trigger: the deployment, with parameters from flags; a wrong name is refused.
    wrong = subprocess.Popen(
        [DRIFTLOOP, "retrain", "--reason", "x", "--deployment", "retraining/retrain", "--param", "min_new_label=0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    manual = _run(
        [
            DRIFTLOOP,
            "retrain",
            "--reason",
            "new labels from support",
            "--who",
            "dana",
            "--deployment",
            "retraining/retrain",
            "-c",
            "rollout",  # a name from configs/ travels as a parameter; the worker's DRIFTLOOP_CONFIG still applies
            "--param",
            "min_new_labels=0",
            "--param",
            "roll_out=false",
            "--param",
            "window_id=manual-1",
        ],
        env,
    )
    assert manual.returncode == 0, manual.stdout + manual.stderr
    # a path never becomes a flow run's parameter (issue 14: overlays are names)
    by_path = _run(
        [DRIFTLOOP, "retrain", "--reason", "x", "--deployment", "retraining/retrain", "-c", str(stack["overlay"])], env
    )
    assert by_path.returncode != 0 and "refused" in by_path.stdout + by_path.stderr
    assert f"{stack['server'].ui_url}/runs/flow-run/" in manual.stdout
    wrong_out, _ = wrong.communicate(timeout=120)
    assert wrong.returncode == 2 and "min_new_label" in wrong_out, wrong_out

    def final(runs):
        return [r for r in runs if r.state and r.state.is_final()]

    dispatches = _wait(api, "retrain-dispatch", lambda runs: len(final(runs)) >= 3, 300, worker)
    # Both windows' runs exist; the manual one and the first window's complete (the second
    # window's would take another full run, and proves nothing more).
    retrains = _wait(
        api,
        "retraining",
        lambda runs: (
            len(runs) >= 3 and {r.parameters.get("window_id") for r in final(runs)} >= {"manual-1", w1.window_id}
        ),
        480,
        worker,
    )
    time.sleep(3)  # a second run for a window would have been created by now (the dispatches ended)
    retrains = _runs_of(api, "retraining")
    # the same event id fired the trigger once; the other id fired it again, and the dispatch run
    # it started found the window's run already there
    by_window = {}
    for run in dispatches:
        by_window.setdefault(run.parameters["window_id"], []).append(run)
    assert sorted(len(v) for v in by_window.values()) == [1, 2], [(r.name, r.parameters) for r in dispatches]
    assert all(r.state.is_completed() for r in dispatches)
    windows = sorted(r.parameters.get("window_id") for r in retrains)
    assert windows == sorted([w1.window_id, w2.window_id, "manual-1"])  # exactly one run per window
    first = next(r for r in retrains if r.parameters["window_id"] == w1.window_id)
    second = next(r for r in retrains if r.parameters["window_id"] == w2.window_id)
    run = next(r for r in retrains if r.parameters["window_id"] == "manual-1")
    assert first.state.is_completed() and run.state.is_completed(), [(r.name, r.state) for r in retrains]
    assert (first.name, run.name) == (
        "retrain (drift-monitor): " + w1.reason,
        "retrain (manual:dana): new labels from support",
    )
    assert second.parameters["reason"] == w2.reason and second.idempotency_key == f"retrain:{MODEL}:{w2.window_id}"
    assert first.idempotency_key == f"retrain:{MODEL}:{w1.window_id}"
    assert {"requested_by:drift-monitor", f"window:{w1.window_id}"} <= set(first.tags)
    assert first.parameters["report"] == w1.report and first.parameters["requested_by"] == "drift-monitor"

    assert run.parameters["min_new_labels"] == 0 and run.parameters["roll_out"] is False
    assert run.parameters["config"] == ["rollout"]
    assert "requested_by:manual:dana" in run.tags
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    artifacts = _query(
        api,
        lambda c: c.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))),
    )
    keys = {a.key for a in artifacts}
    assert {"retrain-request", "retrain-summary", "retrain-mlflow-run"} <= keys, keys
    summary = next(a for a in artifacts if a.key == "retrain-summary")
    assert "new labels from support" in summary.data and "manual:dana" in summary.data
    drift_links = _query(
        api,
        lambda c: c.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[first.id]))
        ),
    )
    assert any(a.key == "retrain-drift-report" and w1.report in a.data for a in drift_links)

    _screenshot(stack["server"].ui_url, run, tmp_path)


def _screenshot(ui_url: str, run, tmp_path: Path) -> None:
    """The flow run's page in the Prefect UI renders, in a real browser."""
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (make system-deps)")
    url = f"{ui_url}/runs/flow-run/{run.id}"
    base = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium'}",
        "--window-size=1400,1000",
        "--virtual-time-budget=15000",
    ]
    png = tmp_path / "flow-run.png"
    shot = subprocess.run([*base, f"--screenshot={png}", url], capture_output=True, text=True, timeout=120, check=False)
    assert png.exists() and png.stat().st_size > 20_000, shot.stderr[-2000:]
    import matplotlib.image

    pixels = matplotlib.image.imread(png)
    assert pixels.shape[:2] == (1000, 1400) and float(pixels[..., :3].std()) > 0.02  # not a blank page
    shutil.copy(png, Path(os.environ.get("DRIFTLOOP_SCREENSHOT", "/tmp/prefect-flow-run.png")))
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=False)
    assert "Something went wrong" not in dom.stdout and "t connect to Server API" not in dom.stdout
    assert run.name in dom.stdout.replace("&amp;", "&"), dom.stdout[-2000:]
