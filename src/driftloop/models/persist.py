"""Models as files that cannot run code: JSON, NumPy arrays without pickles, safetensors.

A saved model is a directory::

    model.json       {"format": "driftloop.model/1", "family": ..., the family's fields}
    <family files>   TF-IDF: arrays.npz + vocab-<i>.json; transformer: head.npz + encoder/
                     (config.json, model.safetensors, the tokenizer's files); ensemble: member-<i>/
    MANIFEST.json    {"files": {relative path: sha256}}: every other file, nothing more

:func:`load` checks the manifest first (a file missing, added or changed refuses the model and
names the file), then reads ``model.json`` with :mod:`json`, arrays with
``numpy.load(allow_pickle=False)`` and the encoder with ``safetensors`` only: no pickle, no class
path taken from the data, nothing executed. Which class a family's files become is this module's
choice (:data:`_LOADERS`), never the file's. The manifest's bytes are what a registration signs
(:mod:`driftloop.core.signing`); :func:`manifest_bytes` gives them to the verifier.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from driftloop.core.errors import InputError

FORMAT = "driftloop.model/1"
MODEL_JSON = "model.json"
MANIFEST = "MANIFEST.json"
# Files a saved model may hold besides the manifest: what the savers below write. Anything else
# (a pickle dropped next to them) is refused before a byte of it is read.
_CHUNK = 1 << 20


class ModelFileError(InputError):
    """A saved model that cannot be loaded safely: names the directory and the file."""


def sha256(path: Path) -> str:
    """The file's SHA-256, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _files(directory: Path) -> list[str]:
    out = []
    for path in sorted(directory.rglob("*")):
        if path.is_symlink():
            raise ModelFileError(f"{path}: a saved model holds no symbolic links")
        if path.is_file() and path.name != MANIFEST:
            out.append(path.relative_to(directory).as_posix())
    return out


def manifest_bytes(directory: Path) -> bytes:
    """The manifest as stored: what a signature covers."""
    try:
        return (Path(directory) / MANIFEST).read_bytes()
    except FileNotFoundError:
        raise ModelFileError(f"{directory}: no {MANIFEST} (not a driftloop model directory)") from None


def write_manifest(directory: Path) -> bytes:
    """Record every file's SHA-256 in ``MANIFEST.json``; its bytes (canonical JSON)."""
    directory = Path(directory)
    body = {"files": {rel: sha256(directory / rel) for rel in _files(directory)}}
    data = json.dumps(body, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    (directory / MANIFEST).write_bytes(data)
    return data


def check_manifest(directory: Path) -> dict[str, str]:
    """The manifest's digests, after checking that the directory holds exactly those files with
    exactly those contents; :class:`ModelFileError` naming the first file that differs."""
    directory = Path(directory)
    try:
        recorded = json.loads(manifest_bytes(directory))["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelFileError(f"{directory / MANIFEST}: not a model manifest ({exc})") from None
    if not isinstance(recorded, dict):
        raise ModelFileError(f"{directory / MANIFEST}: 'files' is not a mapping")
    present = _files(directory)
    for rel in present:
        if rel not in recorded:
            raise ModelFileError(f"{directory / rel}: a file the model's manifest does not list")
    for rel, digest in sorted(recorded.items()):
        path = directory / rel
        if not path.is_file():
            raise ModelFileError(f"{path}: listed in the model's manifest, missing")
        if sha256(path) != digest:
            raise ModelFileError(f"{path}: its SHA-256 differs from the model's manifest (changed after saving)")
    return dict(recorded)


def _write_json(path: Path, body: dict[str, Any]) -> None:
    path.write_text(json.dumps(body, sort_keys=True, indent=1, allow_nan=False) + "\n", encoding="utf-8")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFileError(f"{path}: missing") from None
    except ValueError as exc:
        raise ModelFileError(f"{path}: not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise ModelFileError(f"{path}: not a JSON object")
    return body


def _save_arrays(path: Path, **arrays: np.ndarray) -> None:
    for name, value in arrays.items():
        if value.dtype == object:
            raise ValueError(f"{name}: an object array would need a pickle")
    with open(path, "wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stubs want positional arrays too


def _load_arrays(path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [n for n in names if n not in npz.files]
            if missing:
                raise ModelFileError(f"{path}: arrays {missing} missing")
            return {n: npz[n] for n in names}
    except FileNotFoundError:
        raise ModelFileError(f"{path}: missing") from None
    except ValueError as exc:  # an object array: allow_pickle=False refuses it
        raise ModelFileError(f"{path}: {exc}") from None


# -- TF-IDF ----------------------------------------------------------------------------------------

# The vectorizer settings that shape the analyzer; each must be JSON (no callables, no classes).
_VECTORIZER_PARAMS = (
    "analyzer",
    "ngram_range",
    "lowercase",
    "strip_accents",
    "token_pattern",
    "min_df",
    "max_df",
    "sublinear_tf",
    "norm",
    "use_idf",
    "smooth_idf",
    "binary",
)


def _save_tfidf(model: Any, directory: Path) -> dict[str, Any]:
    vectorizers = []
    arrays: dict[str, np.ndarray] = {"coef": model.coef, "intercept": model.intercept}
    for i, vec in enumerate(model.vectorizers):
        params = vec.get_params()
        for key in ("tokenizer", "preprocessor", "stop_words", "vocabulary"):
            if params.get(key) is not None:
                raise ValueError(f"TF-IDF vectorizer {i}: {key} is set; it cannot be saved without code")
        kept = {k: list(v) if isinstance(v, tuple) else v for k, v in params.items() if k in _VECTORIZER_PARAMS}
        vocab = {str(term): int(index) for term, index in vec.vocabulary_.items()}
        (directory / f"vocab-{i}.json").write_text(json.dumps(vocab, sort_keys=True), encoding="utf-8")
        arrays[f"idf_{i}"] = np.asarray(vec.idf_, dtype=np.float32)
        vectorizers.append({"params": kept, "features": len(vocab)})
    _save_arrays(directory / "arrays.npz", **arrays)
    return {"labels": list(model.labels), "temperature": model.temperature, "vectorizers": vectorizers}


def _load_tfidf(body: dict[str, Any], directory: Path) -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer

    from driftloop.models.families import TfidfIntentModel

    specs = body.get("vectorizers")
    if not isinstance(specs, list) or not specs:
        raise ModelFileError(f"{directory / MODEL_JSON}: 'vectorizers' missing")
    names = ("coef", "intercept", *(f"idf_{i}" for i in range(len(specs))))
    arrays = _load_arrays(directory / "arrays.npz", names)
    vectorizers = []
    for i, spec in enumerate(specs):
        params = {k: v for k, v in dict(spec.get("params", {})).items() if k in _VECTORIZER_PARAMS}
        if "ngram_range" in params:
            params["ngram_range"] = tuple(params["ngram_range"])
        vec = TfidfVectorizer(**params, dtype=np.float32)
        vocab = _read_json(directory / f"vocab-{i}.json")
        if len(vocab) != len(arrays[f"idf_{i}"]):
            raise ModelFileError(f"{directory}: vocab-{i}.json and idf_{i} differ in length")
        vec.vocabulary_ = {str(k): int(v) for k, v in vocab.items()}
        vec.idf_ = arrays[f"idf_{i}"]
        vectorizers.append(vec)
    coef = arrays["coef"]  # stored as the model holds it: (features, labels)
    labels = [str(label) for label in body["labels"]]
    if coef.shape != (sum(len(v.vocabulary_) for v in vectorizers), len(labels)):
        raise ModelFileError(f"{directory / 'arrays.npz'}: coef has shape {coef.shape}, not features x labels")
    return TfidfIntentModel(vectorizers, coef.T, arrays["intercept"], labels, _number(body, "temperature", directory))


# -- transformer -----------------------------------------------------------------------------------

# What the encoder directory may hold: the weights as safetensors, configs and tokenizer files.
_ENCODER_SUFFIXES = (".safetensors", ".json", ".txt", ".model")


def _save_transformer(model: Any, directory: Path) -> dict[str, Any]:
    encoder = directory / "encoder"
    encoder.mkdir()
    for name, data in model._export().items():
        if not name.endswith(_ENCODER_SUFFIXES):
            raise ValueError(f"transformer file {name}: not safetensors, JSON or a tokenizer vocabulary")
        (encoder / name).write_bytes(data)
    if not any(name.endswith(".safetensors") for name in model._export()):
        raise ValueError("the transformer's weights were not saved as safetensors")
    _save_arrays(directory / "head.npz", weight=model.weight, bias=model.bias)
    return {
        "labels": list(model.labels),
        "temperature": model.temperature,
        "pooling": model.pooling,
        "max_length": model.max_length,
        "predict_batch_size": model.predict_batch_size,
        "info": json.loads(json.dumps(model.info, default=str)),
        "model_family": model.family,
    }


def _load_transformer(body: dict[str, Any], directory: Path) -> Any:
    from driftloop.models.transformer.model import TransformerIntentModel

    head = _load_arrays(directory / "head.npz", ("weight", "bias"))
    encoder = directory / "encoder"
    files = {}
    for path in sorted(encoder.iterdir()) if encoder.is_dir() else []:
        if not path.name.endswith(_ENCODER_SUFFIXES):
            raise ModelFileError(f"{path}: not safetensors, JSON or a tokenizer vocabulary")
        files[path.name] = path.read_bytes()
    if not any(name.endswith(".safetensors") for name in files):
        raise ModelFileError(f"{encoder}: no safetensors weights")
    model = TransformerIntentModel(
        None,
        None,
        head["weight"],
        head["bias"],
        [str(label) for label in body["labels"]],
        _number(body, "temperature", directory),
        pooling=str(body["pooling"]),
        max_length=int(body["max_length"]),
        predict_batch_size=int(body["predict_batch_size"]),
        info=dict(body.get("info") or {}),
        family=str(body.get("model_family", "transformer")),
    )
    model._files = files
    return model


# -- ensemble --------------------------------------------------------------------------------------


def _save_ensemble(model: Any, directory: Path) -> dict[str, Any]:
    members = []
    for i, member in enumerate(model.members):
        sub = directory / f"member-{i}"
        sub.mkdir()
        _save_into(member, sub)
        members.append(sub.name)
    return {"members": members, "weights": [float(w) for w in model.weights]}


def _load_ensemble(body: dict[str, Any], directory: Path) -> Any:
    from driftloop.models.ensemble import EnsembleIntentModel

    members = body.get("members")
    if not isinstance(members, list) or len(members) < 2:
        raise ModelFileError(f"{directory / MODEL_JSON}: an ensemble needs at least two members")
    loaded = []
    for name in members:
        if not isinstance(name, str) or not name.startswith("member-") or "/" in name or "\\" in name:
            raise ModelFileError(f"{directory / MODEL_JSON}: member {name!r} is not a member directory")
        loaded.append(_load_from(directory / name))
    return EnsembleIntentModel(loaded, [float(w) for w in body["weights"]])


def _number(body: dict[str, Any], key: str, directory: Path) -> float:
    value = body.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ModelFileError(f"{directory / MODEL_JSON}: {key} is not a finite number ({value!r})")
    return float(value)


_Saver = Callable[[Any, Path], dict[str, Any]]
_Loader = Callable[[dict[str, Any], Path], Any]
# The kinds of file this module reads, by the family a model.json names; the class each becomes
# is fixed here, not by the file.
_SAVERS: dict[str, _Saver] = {"tfidf": _save_tfidf, "transformer": _save_transformer, "ensemble": _save_ensemble}
_LOADERS: dict[str, _Loader] = {"tfidf": _load_tfidf, "transformer": _load_transformer, "ensemble": _load_ensemble}


# Classes registered by register_format, by exact type (a subclass is not its parent's format).
_CLASSES: dict[type, str] = {}


def register_format(kind: str, cls: type, saver: _Saver, loader: _Loader) -> None:
    """Save instances of exactly ``cls`` with ``saver`` (returns model.json's fields; may save
    members with :func:`save_member`) and read a model.json of family ``kind`` with ``loader``
    (with :func:`load_member` for members). The loader is code of this process, registered by
    an import: a file names a kind, never code."""
    _SAVERS[kind] = saver
    _LOADERS[kind] = loader
    _CLASSES[cls] = kind


def _kind(model: Any) -> str:
    registered = _CLASSES.get(type(model))
    if registered is not None:
        return registered
    family = getattr(model, "family", None)
    if type(model).__name__ == "TransformerIntentModel":
        return "transformer"
    if family in _SAVERS:
        return str(family)
    raise ValueError(f"{type(model).__name__}: no safe file format for model family {family!r}")


def _save_into(model: Any, directory: Path) -> None:
    kind = _kind(model)
    body = _SAVERS[kind](model, directory)
    _write_json(directory / MODEL_JSON, {"format": FORMAT, "family": kind, **body})


def _load_from(directory: Path) -> Any:
    body = _read_json(directory / MODEL_JSON)
    if body.get("format") != FORMAT:
        raise ModelFileError(f"{directory / MODEL_JSON}: format {body.get('format')!r}, expected {FORMAT!r}")
    loader = _LOADERS.get(str(body.get("family")))
    if loader is None:
        raise ModelFileError(f"{directory / MODEL_JSON}: unknown family {body.get('family')!r}")
    try:
        return loader(body, directory)
    except KeyError as exc:
        raise ModelFileError(f"{directory / MODEL_JSON}: field {exc} missing") from None


def save_member(model: Any, directory: Path) -> None:
    """Save ``model`` into ``directory`` (a new folder inside the model being saved): for savers of
    models that hold others."""
    Path(directory).mkdir()
    _save_into(model, Path(directory))


def load_member(directory: Path) -> Any:
    """Load a member saved with :func:`save_member` (the outer :func:`load` checked the manifest)."""
    return _load_from(Path(directory))


def save(model: Any, directory: Path) -> bytes:
    """Write ``model`` into ``directory`` (created; must not exist or be empty) as files that
    cannot run code, then the manifest; returns the manifest's bytes (what a signature covers).
    :class:`ValueError` for a model that has no such format (a custom family)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if any(directory.iterdir()):
        raise ValueError(f"{directory}: not empty")
    _save_into(model, directory)
    return write_manifest(directory)


def load(directory: Path) -> Any:
    """The model saved in ``directory``, after :func:`check_manifest`; :class:`ModelFileError`
    naming the file for anything missing, extra, changed or malformed."""
    directory = Path(directory)
    check_manifest(directory)
    return _load_from(directory)
