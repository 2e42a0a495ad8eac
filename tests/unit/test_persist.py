"""Model files that cannot run code: round trips, and every way a tampered directory is refused."""

from __future__ import annotations

import io
import json
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from driftloop.models import persist
from driftloop.models.families import get_family
from driftloop.models.persist import MANIFEST, ModelFileError

TEXTS = ["my card has not arrived yet", "how do I activate my card?", "I was charged twice", ""]


@pytest.fixture(scope="module")
def tfidf(tiny_frame):
    return get_family("tfidf").fit(tiny_frame, {}, seed=0)


def test_tfidf_round_trip_predicts_the_same(tfidf, tmp_path):
    manifest = persist.save(tfidf, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        MANIFEST,
        "arrays.npz",
        "model.json",
        "vocab-0.json",
        "vocab-1.json",
    ]
    assert json.loads(manifest)["files"].keys() == {"arrays.npz", "model.json", "vocab-0.json", "vocab-1.json"}
    again = persist.load(tmp_path / "m")
    assert again.labels == tfidf.labels and again.temperature == tfidf.temperature
    np.testing.assert_allclose(again.predict_proba(TEXTS), tfidf.predict_proba(TEXTS), rtol=1e-6)
    assert [again.count_tokens(t) for t in TEXTS] == [tfidf.count_tokens(t) for t in TEXTS]
    # the same model saves to the same bytes (a signature is stable)
    assert persist.save(again, tmp_path / "again") == manifest


def test_ensemble_round_trip(tiny_frame, tmp_path):
    model = get_family("ensemble").fit(tiny_frame, {"ensemble_members": ["tfidf", "tfidf"], "ensemble_weights": [1, 3]})
    persist.save(model, tmp_path / "e")
    assert (tmp_path / "e" / "member-1" / "arrays.npz").is_file()
    again = persist.load(tmp_path / "e")
    np.testing.assert_allclose(again.predict_proba(TEXTS), model.predict_proba(TEXTS), rtol=1e-6)
    assert again.weights.tolist() == model.weights.tolist()


def test_transformer_round_trip_loads_safetensors_only(banking_train, tiny_transformer_base, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    labels = sorted(banking_train["label"].unique())[:4]
    frame = banking_train[banking_train["label"].isin(labels)].groupby("label").head(10).reset_index(drop=True)
    base = shutil.copytree(tiny_transformer_base, tmp_path / "base")
    params = {"base_model": str(base), "batch_size": 8, "mode": "frozen"}
    model = get_family("transformer").fit(frame, params, seed=0)
    persist.save(model, tmp_path / "t")
    shutil.rmtree(base)
    encoder_files = sorted(p.name for p in (tmp_path / "t" / "encoder").iterdir())
    assert "model.safetensors" in encoder_files
    assert not [n for n in encoder_files if n.endswith((".bin", ".pt", ".pkl", ".pickle"))]
    again = persist.load(tmp_path / "t")
    np.testing.assert_allclose(again.predict_proba(TEXTS[:3]), model.predict_proba(TEXTS[:3]), atol=1e-5)
    assert again.count_tokens(TEXTS[0]) == model.count_tokens(TEXTS[0])


def test_a_changed_missing_or_added_file_is_refused_by_name(tfidf, tmp_path):
    src = tmp_path / "m"
    persist.save(tfidf, src)

    changed = shutil.copytree(src, tmp_path / "changed")
    vocab = json.loads((changed / "vocab-0.json").read_text())
    vocab[next(iter(vocab))] += 1
    (changed / "vocab-0.json").write_text(json.dumps(vocab))
    with pytest.raises(ModelFileError, match=r"vocab-0\.json: its SHA-256 differs"):
        persist.load(changed)

    missing = shutil.copytree(src, tmp_path / "missing")
    (missing / "model.json").unlink()
    with pytest.raises(ModelFileError, match=r"model\.json: listed in the model's manifest, missing"):
        persist.load(missing)

    added = shutil.copytree(src, tmp_path / "added")
    (added / "python_model.pkl").write_bytes(b"not read")
    with pytest.raises(ModelFileError, match=r"python_model\.pkl: a file the model's manifest does not list"):
        persist.load(added)

    with pytest.raises(ModelFileError, match=r"no MANIFEST\.json"):
        persist.load(tmp_path)


class _Payload:
    """Unpickling this would create ``path``: the proof that a pickle ran."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_a_pickled_payload_is_never_executed_even_with_a_rewritten_manifest(tfidf, tmp_path):
    """Whoever can rewrite the files and the manifest (not the signature: that is checked before
    this) still cannot run code: object arrays and unknown families are refused, unread."""
    model = tmp_path / "m"
    persist.save(tfidf, model)
    proof = tmp_path / "payload-ran"
    # an npz whose coef is a pickled object array
    buffer = io.BytesIO()
    arrays = dict(np.load(model / "arrays.npz"))
    with zipfile.ZipFile(buffer, "w") as z:
        for name, value in arrays.items():
            if name == "coef":
                continue
            entry = io.BytesIO()
            np.save(entry, value)
            z.writestr(f"{name}.npy", entry.getvalue())
        entry = io.BytesIO()
        np.save(entry, np.array([_Payload(proof)], dtype=object), allow_pickle=True)
        z.writestr("coef.npy", entry.getvalue())
    (model / "arrays.npz").write_bytes(buffer.getvalue())
    persist.write_manifest(model)
    with pytest.raises(ModelFileError, match=r"arrays\.npz"):
        persist.load(model)
    assert not proof.exists()

    # a model.json naming a family this module does not read, next to a pickle
    other = tmp_path / "other"
    other.mkdir()
    (other / "model.json").write_text(json.dumps({"format": persist.FORMAT, "family": "pickle", "file": "x.pkl"}))
    (other / "x.pkl").write_bytes(pickle.dumps(_Payload(proof)))
    persist.write_manifest(other)
    with pytest.raises(ModelFileError, match="unknown family 'pickle'"):
        persist.load(other)
    assert not proof.exists()


def test_a_model_without_a_safe_format_is_not_saved(tmp_path):
    class Custom:
        family = "custom"

    with pytest.raises(ValueError, match="no safe file format"):
        persist.save(Custom(), tmp_path / "c")
