"""The transformer family through the real training flow (Prefect harness, MLflow on SQLite): both
modes compared on a holdout of the training set, the better one trained, registered and promoted,
the comparison table as a Prefect artifact. A tiny random BERT keeps it to seconds."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from driftloop.adapters import wiring
from driftloop.config.settings import load_settings
from driftloop.flows.training import training
from tests.support.flows import artifacts


@pytest.fixture
def overlays(state, tmp_path, banking_train, tiny_transformer_base, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    labels = sorted(label for label in banking_train["label"].unique() if label.startswith("card"))[:5]
    rows = banking_train[banking_train["label"].isin(labels)].groupby("label").head(30).sample(frac=1, random_state=0)
    train = rows.groupby("label").head(18)
    test = rows.drop(train.index)
    train.rename(columns={"label": "category"}).to_csv(tmp_path / "train.csv", index=False)
    test.rename(columns={"label": "category"}).to_csv(tmp_path / "test.csv", index=False)
    data = tmp_path / "small.yaml"
    data.write_text(
        f"data:\n  train_path: {tmp_path / 'train.csv'}\n  test_path: {tmp_path / 'test.csv'}\n"
        f"  new_labels: [{labels[0]}]\n"
    )
    family = tmp_path / "tiny-transformer.yaml"
    family.write_text(
        "model:\n  family: transformer\n  params:\n"
        f"    base_model: {tiny_transformer_base}\n    mode: frozen\n    epochs: 2\n"
        "    batch_size: 8\n    learning_rate: 1.0e-3\n    log_every_steps: 2\n"
        "selection:\n  grid: {mode: [frozen, finetune]}\n  folds: 1\n  validation_fraction: 0.25\n"
        # a random tiny encoder is far from useful; the test is about the path, not the score
        "promotion:\n  min_score: 0.0\n"
    )
    # Files outside configs/ are no flow parameter (driftloop.core.overlays): DRIFTLOOP_CONFIG.
    monkeypatch.setenv("DRIFTLOOP_CONFIG", f"{data},{family}")
    return []


def test_training_flow_compares_modes_and_registers_the_better(overlays):
    out = training(reason="transformer family", trigger="test", config=overlays)
    result = out.selection
    assert result is not None and [len(s.fold_scores) for s in result.scores] == [1, 1]
    assert result.chosen.score == max(s.score for s in result.scores)
    assert out.decision.promote and out.champion == out.candidate

    settings = load_settings(overlays)
    parts = wiring.build(settings)
    tags = parts.registry.version_tags(out.candidate)
    assert tags["model.family"] == "transformer" and tags["selection.folds"] == "1"
    assert tags["training.mode"] == result.chosen.candidate.overrides["mode"]
    model = parts.registry.load(out.candidate)
    assert model.family == "transformer" and model.info["mode"] == result.chosen.candidate.overrides["mode"]
    assert model.count_tokens("my card has not arrived yet") == 8
    # a finished fine-tuning run leaves no checkpoint behind
    assert not any(settings.checkpoints_dir.glob("*/checkpoint.pt"))

    # the newest: other tests of the session ran model selections on the same Prefect server
    table = max(artifacts("model-selection"), key=lambda a: a.created)
    assert "holdout" in table.description
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert [r["settings"] for r in rows] == ["mode=frozen", "mode=finetune"]


def test_without_refit_the_chosen_holdout_model_is_registered(overlays, monkeypatch):
    # selection.refit false: the winner is not fitted a second time on the whole training set
    monkeypatch.setenv("DRIFTLOOP__SELECTION__REFIT", "false")
    out = training(reason="transformer family, no refit", trigger="test", config=overlays)
    result = out.selection
    assert result is not None and not result.refit
    assert [s.model is None for s in result.scores] == [s is not result.chosen for s in result.scores]

    parts = wiring.build(load_settings(overlays))
    tags = parts.registry.version_tags(out.candidate)
    assert tags["selection.refit"] == "false"
    # a 25% holdout of the training set: the registered model saw only the other rows
    rows = int(tags["data.rows"])
    assert int(tags["training.rows"]) == result.chosen.train_rows < rows
    assert abs(result.chosen.train_rows - 0.75 * rows) <= 5  # stratified per label, so about 3/4
    model = parts.registry.load(out.candidate)
    assert model.info["mode"] == result.chosen.candidate.overrides["mode"]
