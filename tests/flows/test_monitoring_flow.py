"""The monitoring flow decides from the prediction log alone: quiet stays quiet, drift fires once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from driftloop.adapters import predlog, wiring
from driftloop.flows.monitoring import monitoring
from driftloop.flows.training import training
from driftloop.ops import simulator
from tests.support.data import serve_window
from tests.support.flows import artifacts


def retrain_runs() -> int:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    async def count() -> int:
        async with get_client() as client:
            runs = await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["retraining"])))
            return len(runs)

    return asyncio.run(count())


@pytest.fixture
def champion_parts(settings):
    training(reason="v1", trigger="test")
    return wiring.build(settings)


def test_quiet_window_does_not_trigger(champion_parts):
    parts = champion_parts
    before = retrain_runs()
    known = parts.prepared().read("live_known")
    serve_window(parts, known.sample(400, random_state=3), "quiet")
    out = monitoring()
    assert out.drift is not None and out.drift.n_current == 400
    assert not out.drift.drift_detected and not out.decision.retrain
    # the verdict travels to the replicas as a registered-model tag, beside the routing
    status = parts.registry.routing().monitor
    assert status is not None and status.model_version == parts.registry.champion().version
    assert not status.drift_detected and status.share_drifted == out.drift.share_drifted
    assert parts.ledger.records() == []
    assert retrain_runs() == before
    # the report is an MLflow artifact of a monitor run, linked from the Prefect flow run
    assert out.report.endswith(".html")
    assert Path(out.report.removeprefix("file://")).exists()
    summaries = [a for a in artifacts("drift-summary") if "no drift" in (a.description or "").lower()]
    assert summaries and "| text_drift |" in summaries[-1].data
    links = artifacts("drift-report")
    assert links and "/#/experiments/" in links[-1].data


def test_drift_triggers_exactly_once(champion_parts, monkeypatch):
    parts = champion_parts
    # No labels arrive and the retrain may not wait: the triggered run fails, the champion stays,
    # and the same window must not start a second run.
    monkeypatch.setenv("DRIFTLOOP__RETRAIN__LABEL_WAIT_TIMEOUT_S", "0")
    before = retrain_runs()
    champion = parts.registry.champion()
    known = parts.prepared().read("live_known")
    new = parts.prepared().read("live_new")
    serve_window(parts, simulator.mix(known, new, 400, 0.35, seed=5), "drift")
    # a run that may not retrain only previews the decision: it claims nothing
    preview = monitoring(trigger_retrain=False)
    assert preview.decision.retrain and preview.retrain is None
    assert parts.ledger.records() == [] and retrain_runs() == before
    first = monitoring()
    assert first.drift.window_id == preview.drift.window_id
    assert first.drift.drift_detected and first.decision.retrain
    assert first.retrain is None  # failed for lack of labels
    assert retrain_runs() == before + 1
    assert parts.registry.champion() == champion
    assert [r.window_id for r in parts.ledger.records()] == [first.drift.window_id]

    second = monitoring()
    assert second.drift.window_id == first.drift.window_id
    assert second.drift.drift_detected and not second.decision.retrain
    assert "already triggered" in second.decision.reason
    assert retrain_runs() == before + 1
    assert len(parts.ledger.records()) == 1


def test_too_small_window_is_not_judged(champion_parts):
    parts = champion_parts
    known = parts.prepared().read("live_known")
    serve_window(parts, known.head(20), "small")
    out = monitoring()
    assert out.drift is None and not out.decision.retrain and "min_window" in out.decision.reason


def test_a_promotion_that_regresses_is_undone_by_the_next_monitor_run(champion_parts, monkeypatch):
    """However a champion was promoted (here by hand, no rollout), the monitor holds it to its
    predecessor's live baseline and undoes the promotion on a regression."""
    from driftloop.rollout import champion as aliases
    from tests.support.rollout_models import SlowClassifier

    parts = champion_parts
    monkeypatch.setenv("DRIFTLOOP__ROLLOUT__BAKE__MIN_SAMPLES", "150")
    v1 = parts.registry.champion()
    known = parts.prepared().read("live_known")
    serve_window(parts, known.head(300), "before")  # v1's baseline: 1 ms per request
    slow = SlowClassifier(parts.registry.load(v1), delay_s=0.0)
    v2 = parts.registry.register_model(slow, run_name="hand-made", input_example=["where is my card"])
    aliases.move_alias(parts.registry, parts.history, "champion", v2, action="promote", reason="by hand", actor="test")
    texts = known["text"].tolist()[300:500]
    with predlog.PredictionLog(parts.log_root) as log:  # v2 answers the same way, 40 ms each
        log.write_batch(
            [f"after-{i}" for i in range(len(texts))], texts, slow.predict(texts), v2.version, 40.0, [1] * len(texts)
        )
    out = monitoring()
    assert out.rolled_back is not None and out.drift is None
    assert (out.rolled_back.from_version, out.rolled_back.to_version) == (v2.version, v1.version)
    assert "p95_latency_ms" in out.rolled_back.reason and out.rolled_back.report.endswith(".md")
    undo = [e for e in parts.history.entries() if e.action == "rollback"]
    assert [(e.from_version, e.to_version) for e in undo] == [(v2.version, v1.version)]
    # the retrain run was opened with the evidence; without a rollout policy its candidate is
    # judged against v1 on the shared evaluation set like any candidate (and may replace it)
    assert out.retrain is not None and out.retrain.candidate.version == "3"
    assert parts.registry.version_tags(out.retrain.candidate)["report"] == out.report
    assert parts.registry.champion() == out.retrain.champion and out.retrain.champion != v2
    # the next run finds nothing left to undo
    assert monitoring().rolled_back is None


def _drift_events(window_id: str) -> list[dict]:
    """``driftloop.drift.detected`` events the server stored for a window (its events API)."""
    import httpx
    from prefect.settings import get_current_settings

    body = {"filter": {"event": {"name": ["driftloop.drift.detected"]}}, "limit": 50}
    found = httpx.post(f"{get_current_settings().api.url}/events/filter", json=body, timeout=10).json()["events"]
    return [e for e in found if e["payload"].get("window_id") == window_id]


def test_event_dispatch_emits_one_drift_event_per_window_instead_of_retraining(champion_parts, monkeypatch):
    """retrain.dispatch: event — the monitor records the window and emits the event with the
    window's deterministic id; the deployment trigger (prefect.yaml) starts the retrain."""
    import time

    from driftloop.core.triggers import drift_event_id

    parts = champion_parts
    monkeypatch.setenv("DRIFTLOOP__RETRAIN__DISPATCH", "event")
    before = retrain_runs()
    known = parts.prepared().read("live_known")
    new = parts.prepared().read("live_new")
    serve_window(parts, simulator.mix(known, new, 400, 0.35, seed=5), "drift")
    first = monitoring()
    window = first.drift.window_id
    assert first.decision.retrain and first.retrain is None
    assert first.event_id == str(drift_event_id(parts.registry.model_name, window))
    assert retrain_runs() == before  # no inline retrain
    assert [r.window_id for r in parts.ledger.records()] == [window]
    second = monitoring()
    assert second.drift.window_id == window and not second.decision.retrain and second.event_id == ""
    deadline = time.monotonic() + 20
    while not (events := _drift_events(window)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert [e["id"] for e in events] == [first.event_id]
    assert events[0]["resource"]["prefect.resource.id"] == f"driftloop.model.{parts.registry.model_name}"
    assert events[0]["payload"]["report"] == first.report and events[0]["payload"]["champion_version"] == "1"
