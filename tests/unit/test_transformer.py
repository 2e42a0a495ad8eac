"""The transformer family on a tiny randomly initialised BERT (tests/tiny_transformer.py) with the
real all-MiniLM-L6-v2 tokenizer: both modes, token counts, the pickle that carries the weights,
resuming from a checkpoint, the ensemble, and a holdout comparison choosing the better candidate."""

from __future__ import annotations

import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from driftloop.config.settings import ModelSettings
from driftloop.models.families import get_family
from driftloop.models.selection import choose, expand_grid, score_candidate
from driftloop.models.transformer import (
    TrainingInterrupted,
    TransformerParams,
    checkpoint_key,
    validation_split,
)
from driftloop.models.transformer.checkpoint import Checkpointer

TEXTS = ["my card has not arrived yet", "how do I activate my card?", "I was charged twice"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    # Nothing here may reach a model hub: every base model is a local folder.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def small_frame(banking_train):
    labels = sorted(banking_train["label"].unique())[:4]
    return banking_train[banking_train["label"].isin(labels)].groupby("label").head(10).reset_index(drop=True)


def params(base, **extra):
    return {"base_model": str(base), "batch_size": 8, "log_every_steps": 1, **extra}


def test_params_ignore_other_families_and_name_bad_keys():
    p = TransformerParams.from_params({"C": 0.5, "char_ngrams": [2, 5], "mode": "finetune", "epochs": "2"})
    assert p.mode == "finetune" and p.epochs == 2
    with pytest.raises(ValueError, match=r"model\.params\.mode"):
        TransformerParams.from_params({"mode": "distil"})
    with pytest.raises(ValueError, match=r"model\.params\.max_length"):
        TransformerParams.from_params({"max_length": "long"})


def test_validation_split_is_stratified_and_seeded():
    labels = ["a"] * 20 + ["b"] * 10 + ["c"] * 1
    mask = validation_split(labels, 0.2, seed=3)
    assert mask[:20].sum() == 4 and mask[20:30].sum() == 2 and not mask[30]
    assert (mask == validation_split(labels, 0.2, seed=3)).all()


def test_checkpoint_key_follows_data_and_learned_settings_only(small_frame):
    p = TransformerParams.from_params({"mode": "finetune"})
    key = checkpoint_key(small_frame, p, seed=0)
    assert key == checkpoint_key(
        small_frame,
        TransformerParams.from_params(
            {"mode": "finetune", "stop_after_steps": 3, "max_minutes": 5, "log_every_steps": 1}
        ),
        seed=0,
    )
    assert key != checkpoint_key(small_frame, TransformerParams.from_params({"mode": "finetune", "epochs": 2}), seed=0)
    assert key != checkpoint_key(small_frame.iloc[1:], p, seed=0)
    assert key.split("-")[0] != checkpoint_key(small_frame.iloc[1:], p, seed=0).split("-")[0]


def test_importing_the_families_and_the_settings_imports_no_torch():
    # torch and transformers cost seconds: only training or predicting with a transformer loads them.
    code = (
        "import sys, driftloop.config.settings, driftloop.models.families, driftloop.models.transformer; "
        "print(sorted({'torch', 'transformers', 'sklearn'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_checkpointer_replaces_its_files_whole_and_removes_its_folder(tmp_path):
    import torch

    folder = tmp_path / "run"
    checkpoints = Checkpointer(folder)
    assert checkpoints.load_latest("cpu") is None and checkpoints.load_best() is None
    checkpoints.save_latest({"step": 3, "history": [{"step": 0}], "net": {"w": torch.ones(2)}})
    checkpoints.save_latest({"step": 5, "history": [{"step": 0}, {"step": 5}], "net": {"w": torch.zeros(2)}})
    checkpoints.save_best({"w": torch.full((2,), 7.0)})
    assert sorted(p.name for p in folder.iterdir()) == ["best.pt", "checkpoint.pt"]  # no .tmp left behind
    latest = checkpoints.load_latest("cpu")
    assert latest is not None and latest["step"] == 5 and latest["history"][-1] == {"step": 5}
    assert torch.equal(latest["net"]["w"], torch.zeros(2))
    best = checkpoints.load_best()
    assert best is not None and torch.equal(best["w"], torch.full((2,), 7.0))
    checkpoints.remove()
    assert not folder.exists()


def test_frozen_mode_predicts_counts_real_tokens_and_pickles_its_weights(small_frame, tiny_transformer_base, tmp_path):
    base = shutil.copytree(tiny_transformer_base, tmp_path / "base")
    model = get_family("transformer").fit(small_frame, params(base, mode="frozen"), seed=0)
    proba = model.predict_proba(TEXTS)
    assert proba.shape == (3, 4) and np.allclose(proba.sum(axis=1), 1)
    assert model.labels == tuple(sorted(small_frame["label"].unique()))
    assert [p.intent for p in model.predict(TEXTS)] == [model.labels[i] for i in proba.argmax(axis=1)]
    # [CLS] my card has not arrived yet [SEP]: word pieces of the real tokenizer
    assert model.count_tokens("my card has not arrived yet") == 8
    assert model.count_tokens("word " * 500) == 64  # truncated at max_length, as the encoder sees it
    emb = model.embed(TEXTS)
    assert emb.shape == (3, 32) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    # The pickle carries weights and tokenizer: it loads with the base folder gone.
    blob = pickle.dumps(model)
    shutil.rmtree(base)
    again = pickle.loads(blob)  # noqa: S301  the test's own pickle
    assert np.allclose(again.predict_proba(TEXTS), proba, atol=1e-5)
    assert again.count_tokens("my card has not arrived yet") == 8


class _Payload:
    """Unpickling this creates ``proof``: the proof that a loader ran code from a file."""

    def __init__(self, proof: str):
        self.proof = proof

    def __reduce__(self):
        return (Path.touch, (Path(self.proof),))


def test_a_checkpoint_replaced_by_a_pickle_with_a_payload_is_refused_and_never_runs(tmp_path):
    """Issue 14, finding 5: serving once mounted the checkpoint volume read-write; a checkpoint
    someone swapped for a pickle that runs code is refused by weights_only, never executed."""

    import torch

    folder = tmp_path / "run"
    checkpoints = Checkpointer(folder)
    checkpoints.save_latest({"step": 1, "history": [], "net": {"w": torch.ones(2)}})
    proof = tmp_path / "payload-ran"
    torch.save({"step": 2, "net": _Payload(str(proof))}, folder / "checkpoint.pt")
    (folder / "best.pt").write_bytes(pickle.dumps({"w": _Payload(str(proof))}))
    with pytest.raises(pickle.UnpicklingError):
        checkpoints.load_latest("cpu")
    with pytest.raises(pickle.UnpicklingError):
        checkpoints.load_best()
    assert not proof.exists()


def test_finetune_resumes_from_its_checkpoint_after_an_interruption(small_frame, tiny_transformer_base, tmp_path):
    cfg = params(tiny_transformer_base, mode="finetune", epochs=2, learning_rate=1e-3, checkpoint_every_steps=100)
    family = get_family("transformer")
    messages: list[str] = []
    with pytest.raises(TrainingInterrupted):
        family.fit(
            small_frame, {**cfg, "stop_after_steps": 3}, seed=0, progress=messages.append, checkpoint_root=tmp_path
        )
    [folder] = list(tmp_path.iterdir())
    assert folder.name == checkpoint_key(small_frame, TransformerParams.from_params(cfg), seed=0)
    assert (folder / "checkpoint.pt").is_file()
    assert any("step 3/" in m and "loss" in m and "ETA" in m for m in messages)

    messages.clear()
    model = family.fit(small_frame, cfg, seed=0, progress=messages.append, checkpoint_root=tmp_path)
    assert any("resuming from step 3/" in m for m in messages)
    assert not any(m.startswith("step 1/") for m in messages)  # steps 1-3 are not trained again
    assert model.info["resumed_from"] == 3
    assert model.info["steps"] == model.info["total_steps"] == 2 * 5  # 36 rows after validation, batch 8
    assert model.predict_proba(TEXTS).shape == (3, 4)
    assert not folder.exists()  # a finished run removes its checkpoint


def test_a_time_limit_anneals_the_rate_to_zero_and_keeps_the_best(small_frame, tiny_transformer_base):
    # 1000 epochs would take minutes: the time limit (about 3 s of fine-tuning, after the 5 s
    # kept back for the closing passes) ends the run, and the rate reaches ~0 by then
    # instead of stopping at its peak.
    cfg = params(
        tiny_transformer_base, mode="finetune", epochs=1000, learning_rate=1e-3, max_minutes=0.15, patience=100_000
    )
    messages: list[str] = []
    model = get_family("transformer").fit(small_frame, cfg, seed=0, progress=messages.append)
    assert model.info["stop"].startswith("time limit") and model.info["steps"] < model.info["total_steps"]
    rates = [float(m.split(" lr ")[1].split()[0]) for m in messages if m.startswith("step ") and " lr " in m]
    assert max(rates) > 0.5e-3  # it warmed up to near the full rate ...
    assert rates[-1] < 0.25e-3  # ... and decayed towards 0 at the limit
    assert any(m.startswith("time limit 0.15 min:") for m in messages)
    assert model.predict_proba(TEXTS).shape == (3, 4)


def test_ensemble_averages_calibrated_members(small_frame, tiny_transformer_base):
    model = get_family("ensemble").fit(small_frame, params(tiny_transformer_base, mode="frozen", char_min_df=1), seed=0)
    tfidf, transformer = model.members
    assert (tfidf.family, transformer.family) == ("tfidf", "transformer")
    assert np.allclose(model.predict_proba(TEXTS), (tfidf.predict_proba(TEXTS) + transformer.predict_proba(TEXTS)) / 2)
    assert model.count_tokens("my card has not arrived yet") == 8
    assert model.embed(TEXTS).shape == (3, 32)
    assert {"torch", "transformers"} <= set(model.pip_packages)


def test_holdout_comparison_chooses_the_better_family(small_frame, tiny_transformer_base):
    # A head regularised to nothing cannot beat TF-IDF; it comes first, so a tie would pick it.
    base = ModelSettings(
        family="tfidf", params={**params(tiny_transformer_base, mode="frozen", head_C=1e-6), "char_min_df": 1}
    )
    candidates = expand_grid(base, {"family": ["transformer", "tfidf"]})
    scores = [
        score_candidate(small_frame, c, folds=1, metric="accuracy", seed=0, validation_fraction=0.3) for c in candidates
    ]
    result = choose(scores, folds=1, runner="sequential")
    assert scores[1].score > scores[0].score
    assert result.chosen.candidate.model.family == "tfidf"
    assert [len(s.fold_scores) for s in scores] == [1, 1]


def test_refit_false_needs_a_single_holdout():
    from pydantic import ValidationError

    from driftloop.config.settings import SelectionSettings

    assert not SelectionSettings(refit=False, folds=1).refit
    with pytest.raises(ValidationError, match="refit: false needs folds: 1"):
        SelectionSettings(refit=False, folds=3)


def test_the_overlay_loads_and_a_bad_mode_fails_at_start(monkeypatch):
    from pydantic import ValidationError

    from driftloop.config.settings import load_settings

    settings = load_settings(["transformer"])
    assert settings.model.family == "transformer" and settings.selection.folds == 1
    # minutes on 2 CPU cores by default; fine-tuning (an hour a fit there) is asked for by name
    assert TransformerParams.from_params(settings.model.params).mode == "frozen"
    tuned = TransformerParams.from_params(load_settings(["transformer", "finetune"]).model.params)
    assert (tuned.mode, tuned.max_minutes) == ("finetune", 60)
    monkeypatch.setenv("DRIFTLOOP__MODEL__PARAMS__MODE", "distil")
    with pytest.raises(ValidationError, match=r"model\.params\.mode"):
        load_settings(["transformer"])
