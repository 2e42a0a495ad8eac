"""The monitoring flow decides from the prediction log alone: quiet stays quiet, drift fires once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pandas as pd
import pytest

from driftloop import predlog, simulator, wiring
from driftloop.dataset import read_labelled
from flows.monitoring import monitoring
from flows.training import training


def serve_window(parts, frame: pd.DataFrame, tag: str, label_share: float = 0.0) -> list[str]:
    """What the serving app does for each request: predict with the champion, log, collect labels."""
    ref = parts.registry.champion()
    model = parts.registry.load(ref)
    ids = [f"{tag}-{i}" for i in range(len(frame))]
    texts = frame["text"].tolist()
    with predlog.PredictionLog(parts.log_root) as log:
        log.write_batch(ids, texts, model.predict(texts), ref.version, 1.0, [len(t.split()) for t in texts])
    if label_share:
        n = int(len(frame) * label_share)
        with predlog.FeedbackLog(parts.log_root) as fb:
            for rid, label in zip(ids[:n], frame["label"].tolist()[:n]):
                fb.write(rid, label)
    return ids


def retrain_runs() -> int:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    async def count() -> int:
        async with get_client() as client:
            runs = await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["retraining"])))
            return len(runs)

    return asyncio.run(count())


def artifacts(key: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read() -> list:
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))

    return asyncio.run(read())


@pytest.fixture
def champion_parts(settings):
    training(reason="v1", trigger="test")
    return wiring.build(settings)


def test_quiet_window_does_not_trigger(champion_parts):
    parts = champion_parts
    before = retrain_runs()
    known = read_labelled(parts.prepared_dir / "live_known.csv")
    serve_window(parts, known.sample(400, random_state=3), "quiet")
    out = monitoring()
    assert out.drift is not None and out.drift.n_current == 400
    assert not out.drift.drift_detected and not out.decision.retrain
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
    known = read_labelled(parts.prepared_dir / "live_known.csv")
    new = read_labelled(parts.prepared_dir / "live_new.csv")
    serve_window(parts, simulator.mix(known, new, 400, 0.35, seed=5), "drift")
    first = monitoring()
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
    known = read_labelled(parts.prepared_dir / "live_known.csv")
    serve_window(parts, known.head(20), "small")
    out = monitoring()
    assert out.drift is None and not out.decision.retrain and "min_window" in out.decision.reason
