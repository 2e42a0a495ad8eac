"""The training flow end to end: gate, registry, aliases, history, DVC lineage."""

from __future__ import annotations

import hashlib
import json

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from driftloop.adapters import tracing, wiring
from driftloop.data.dataset import read_labelled
from driftloop.flows.training import training


def test_first_training_promotes_with_lineage(settings, tmp_path):
    spans = InMemorySpanExporter()
    tracing.configure(settings.tracing, exporter=spans)
    try:
        out = training(reason="first", trigger="test")
    finally:
        tracing.shutdown()
    parts = wiring.build(settings)
    assert out.decision.promote
    assert parts.registry.champion() == out.candidate
    tags = parts.registry.version_tags(out.candidate)
    for key in ("data.md5", "git.commit", "config.hash", "prefect.flow_run_id", "eval.md5", "metric.accuracy"):
        assert tags.get(key), key
    assert tags["config.hash"] == settings.config_hash()
    # the run is one span with its Prefect run id and its outcome
    [span] = [s for s in spans.get_finished_spans() if s.name == "flow training"]
    assert span.attributes["driftloop.flow.run_id"] == tags["prefect.flow_run_id"]
    assert span.attributes["driftloop.model_version"] == out.candidate.version
    assert span.attributes["driftloop.promote"] is True
    # v1 never saw the 10 new intents: good on the rest, so between 0.75 and 0.9 overall
    assert 0.75 < out.report.accuracy < 0.9
    entries = parts.history.entries()
    assert [(e.alias, e.action, e.to_version) for e in entries] == [
        ("challenger", "register", "1"),
        ("champion", "promote", "1"),
        ("challenger", "clear", None),
    ]
    assert parts.registry.challenger() is None
    # the exact training set comes back from its DVC hash alone
    restored = parts.datasets.restore(tags["data.md5"], tmp_path / "restored.csv")
    assert hashlib.md5(restored.read_bytes(), usedforsecurity=False).hexdigest() == tags["data.md5"]
    assert len(read_labelled(restored)) == int(tags["data.rows"])


def test_worse_candidate_is_not_promoted(settings, tmp_path, monkeypatch):
    first = training(reason="first", trigger="test")
    monkeypatch.setenv("DRIFTLOOP__PROMOTION__MIN_SCORE", "0.1")  # so the regression rule decides
    parts = wiring.build(settings)
    small = parts.prepared().read("train").groupby("label").head(3)
    path = tmp_path / "small.csv"
    small.to_csv(path, index=False)
    second = training(training_set=str(path), reason="tiny data", trigger="test")
    assert second.report.accuracy > 0.1
    assert not second.decision.promote and "regresses" in second.decision.reason
    assert second.report.accuracy < first.report.accuracy
    assert parts.registry.champion() == first.candidate
    assert parts.registry.challenger() == second.candidate
    assert parts.history.entries()[-1].action == "register"
    assert [v["aliases"] for v in parts.registry.versions()] == [["challenger"], ["champion"]]


def test_validation_failure_leaves_champion_unchanged(settings, tmp_path):
    first = training(reason="first", trigger="test")
    parts = wiring.build(settings)
    bad = parts.prepared().read("train").head(200).copy()
    bad.loc[3, "text"] = "   "
    bad.loc[7, "label"] = "not_an_intent"
    path = tmp_path / "bad.csv"
    bad.to_csv(path, index=False)
    versions_before = len(parts.registry.versions())
    history_before = len(parts.history.entries())
    state = training(training_set=str(path), reason="bad batch", trigger="test", return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="empty_text") as err:
        state.result()
    message = str(err.value)
    assert "empty_text" in message and "rows [3]" in message and "unknown_label" in message
    assert parts.registry.champion() == first.candidate
    assert len(parts.registry.versions()) == versions_before
    assert len(parts.history.entries()) == history_before


def test_other_dataset_by_configuration_alone(state, tmp_path, banking_train, monkeypatch):
    """A JSON data set with other field names runs through the same flow by configuration."""
    labels = sorted(banking_train["label"].unique())[:8]
    rows = banking_train[banking_train["label"].isin(labels)].sample(frac=1.0, random_state=0)
    records = [{"utterance": t, "intent": label} for t, label in zip(rows["text"], rows["label"], strict=True)]
    half = len(records) * 3 // 4
    (tmp_path / "train.json").write_text(json.dumps(records[:half]))
    (tmp_path / "test.json").write_text(json.dumps({"data": records[half:]}))
    overlay = tmp_path / "other.yaml"
    overlay.write_text(
        "data:\n  name: other\n"
        f"  train_path: {tmp_path / 'train.json'}\n  test_path: {tmp_path / 'test.json'}\n"
        "  text_field: utterance\n  label_field: intent\n"
        f"  new_labels: [{labels[0]}]\n"
        "registry:\n  model_name: other-router\n"
    )
    monkeypatch.setenv("DRIFTLOOP_CONFIG", str(overlay))  # a file outside configs/: not a flow parameter
    out = training(reason="other data set", trigger="test")
    assert out.decision.promote and out.candidate.name == "other-router"
    assert out.report.n > 0


def test_cli_status_history_and_restore(settings, tmp_path):
    """What a data scientist types: status, history, and restoring v1's exact training set."""
    from typer.testing import CliRunner

    from driftloop.entry.cli import app

    out = training(reason="first", trigger="test")
    runner = CliRunner()
    status = runner.invoke(app, ["status"])
    assert status.exit_code == 0, status.output
    assert "champion" in status.output and "train-test" in status.output
    history = runner.invoke(app, ["history", "--json"])
    assert history.exit_code == 0 and '"action": "promote"' in history.output
    dest = tmp_path / "v1.csv"
    restored = runner.invoke(app, ["data", "restore", "--version", out.candidate.version, "--out", str(dest)])
    assert restored.exit_code == 0, restored.output
    assert hashlib.md5(dest.read_bytes(), usedforsecurity=False).hexdigest() == out.data_md5
