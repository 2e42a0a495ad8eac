"""Which model versions may be loaded: signed by a trusted key, unchanged since, in driftloop's
own file format. No MLflow here: the store (MLflow client) and the REST source share it.

- **Signing** (training): the Ed25519 private key comes from ``DRIFTLOOP_SIGNING_KEY`` (base64),
  else, on the embedded default, from ``<state_dir>/keys/model-signing.key`` (created on first
  use, mode 600, beside its public half ``model-signing.pub``). On the stack and in Kubernetes
  only training gets the private key.
- **Verifying** (serving, training's champion, the rollout): the public keys of
  ``registry.trusted_keys``, ``DRIFTLOOP_TRUSTED_KEYS`` (comma-separated base64) and the state
  dir's ``model-signing.pub`` when there is one. A version is loaded only when its
  ``model.signature`` tag is a signature by one of them over the files' ``MANIFEST.json``, every
  file matches the manifest, and the files are driftloop's own format
  (:mod:`driftloop.models.persist`: JSON, arrays without pickles, safetensors); anything else
  raises :class:`~driftloop.core.errors.ModelRefused` before a byte of the model is parsed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from driftloop.adapters.registry.names import LEGACY_PICKLE_ARTIFACT, MODEL_ARTIFACT
from driftloop.core import signing
from driftloop.core.errors import InputError, ModelRefused
from driftloop.models import persist
from driftloop.models.families import TextClassifier

SIGNING_KEY_ENV = "DRIFTLOOP_SIGNING_KEY"
TRUSTED_KEYS_ENV = "DRIFTLOOP_TRUSTED_KEYS"
KEY_FILE = "model-signing.key"
PUBLIC_FILE = "model-signing.pub"


@dataclass(frozen=True)
class ModelTrust:
    """The key this process signs with (None: it may not register versions) and the public keys
    whose signatures it accepts."""

    signing_key: str | None = None
    trusted: tuple[str, ...] = ()  # the configured public keys; trusted_keys() adds the derived ones
    key_dir: Path | None = None  # where a signing key is created on first use (embedded default)

    @classmethod
    def from_environment(cls, key_dir: Path | None = None, trusted: Iterable[str] = ()) -> ModelTrust:
        """The keys of the environment, ``trusted`` (settings) and ``key_dir`` (the state dir's
        key folder, the embedded default: its public key is trusted when it exists)."""
        keys = [k.strip() for k in trusted if k.strip()]
        keys += [k.strip() for k in os.environ.get(TRUSTED_KEYS_ENV, "").split(",") if k.strip()]
        private = os.environ.get(SIGNING_KEY_ENV, "").strip() or None
        return cls(private, tuple(dict.fromkeys(keys)), key_dir)

    def _private_key(self) -> str:
        if self.signing_key is not None:
            return self.signing_key
        if self.key_dir is None:
            raise InputError(
                f"registering a model version needs a signing key: set {SIGNING_KEY_ENV} "
                "(base64 Ed25519; `driftloop keys new` makes one) where training runs"
            )
        directory = Path(self.key_dir)
        key_file, public_file = directory / KEY_FILE, directory / PUBLIC_FILE
        if not key_file.is_file():
            directory.mkdir(parents=True, exist_ok=True)
            pair = signing.generate()
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(pair.private + "\n")
            public_file.write_text(pair.public + "\n", encoding="ascii")
        private = key_file.read_text(encoding="ascii").strip()
        if not public_file.is_file():
            public_file.write_text(signing.public_of(private) + "\n", encoding="ascii")
        return private

    def sign(self, manifest: bytes) -> str:
        """The signature of a saved model's manifest (creates the embedded default's key)."""
        return signing.sign(manifest, self._private_key())

    def trusted_keys(self) -> tuple[str, ...]:
        """The public keys accepted now: the configured ones, the public half of the key this
        process signs with, and the embedded default's (read here: it is created on the first
        registration, possibly by another process)."""
        keys = list(self.trusted)
        if self.key_dir is not None and (Path(self.key_dir) / PUBLIC_FILE).is_file():
            keys.append((Path(self.key_dir) / PUBLIC_FILE).read_text(encoding="ascii").strip())
        if self.signing_key is not None:
            keys.append(signing.public_of(self.signing_key))
        return tuple(dict.fromkeys(keys))

    def check_signature(self, manifest: bytes, signature: str | None, what: str, url: str | None = None) -> None:
        """:class:`ModelRefused` unless ``signature`` is a trusted key's over ``manifest``: a
        downloader checks it before fetching the files the manifest lists."""
        try:
            signing.verify(manifest, signature or "", self.trusted_keys())
        except signing.SignatureError as exc:
            raise ModelRefused(f"{what}: refused, not loaded: {exc}", url=url) from None

    def load(self, directory: Path, signature: str | None, what: str, url: str | None = None) -> TextClassifier:
        """The model saved in ``directory``, once its signature and files check out;
        :class:`ModelRefused` naming ``what`` (the version) and the reason otherwise."""
        try:
            manifest = persist.manifest_bytes(directory)
        except persist.ModelFileError as exc:
            raise ModelRefused(f"{what}: refused, not loaded: {exc}", url=url) from None
        self.check_signature(manifest, signature, what, url)
        try:
            model: TextClassifier = persist.load(directory)
        except persist.ModelFileError as exc:
            raise ModelRefused(f"{what}: refused, not loaded: {exc}", url=url) from None
        return model


def manifest_digest(manifest: bytes) -> str:
    """The manifest's SHA-256 (the version's ``model.manifest_sha256`` tag)."""
    return hashlib.sha256(manifest).hexdigest()


def safe_relative(path: str) -> bool:
    """Whether a manifest's file name stays inside the model folder (no absolute path, no ``..``)."""
    parts = Path(path).parts
    return bool(parts) and not Path(path).is_absolute() and ".." not in parts and "\\" not in path


def model_artifact_path(mlmodel_text: str | bytes, what: str, url: str | None = None) -> str:
    """Where a logged MLflow model keeps driftloop's model files, from its ``MLmodel`` file;
    :class:`ModelRefused` for a model logged another way (e.g. the pickled classifier of versions
    registered before signed model files)."""
    try:
        mlmodel = yaml.safe_load(mlmodel_text)
        artifacts = mlmodel["flavors"]["python_function"].get("artifacts") or {}
    except (KeyError, TypeError, AttributeError, yaml.YAMLError) as exc:
        raise ModelRefused(f"{what}: not an MLflow pyfunc model ({exc}); not loaded", url=url) from None
    if MODEL_ARTIFACT not in artifacts:
        legacy = " (a pickled classifier, registered before signed model files: retrain it)"
        raise ModelRefused(
            f"{what}: no '{MODEL_ARTIFACT}' artifact{legacy if LEGACY_PICKLE_ARTIFACT in artifacts else ''}; "
            "not loaded",
            url=url,
        )
    relative = str(artifacts[MODEL_ARTIFACT].get("path", ""))
    if not safe_relative(relative):
        raise ModelRefused(f"{what}: model artifact path {relative!r} leaves the model; not loaded", url=url)
    return relative


def manifest_files(manifest: bytes, what: str, url: str | None = None) -> list[str]:
    """The file names a model's manifest lists, each checked to stay inside the model folder (a
    downloader fetches exactly these; :func:`ModelTrust.load` then checks their contents)."""
    try:
        files = json.loads(manifest)["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelRefused(f"{what}: not a model manifest ({exc}); not loaded", url=url) from None
    if not isinstance(files, dict) or not all(isinstance(f, str) and safe_relative(f) for f in files):
        raise ModelRefused(f"{what}: the manifest names a file outside the model; not loaded", url=url)
    return sorted(files)
