"""A model version loads only when it is signed by a trusted key and unchanged since: a swapped
artifact, a foreign key, an unsigned pickle are refused (and a pickle's payload never runs), by
the MLflow client and by the REST source, and serving keeps its champion."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import pytest

from driftloop.adapters.registry import CHAMPION, Registry
from driftloop.adapters.registry.names import FORMAT_TAG, MANIFEST_TAG, SIGNATURE_TAG
from driftloop.adapters.registry.rest import RestModelSource
from driftloop.adapters.registry.trust import ModelTrust
from driftloop.core import signing
from driftloop.core.errors import ModelRefused
from driftloop.core.types import ModelRef
from driftloop.models import persist
from driftloop.models.families import get_family
from driftloop.serving.metrics import ServingMetrics
from driftloop.serving.poller import RoutingPoller
from tests.support.serving import TEXTS

MODEL = "trust"


@pytest.fixture(scope="module")
def model(tiny_frame):
    return get_family("tfidf").fit(tiny_frame, {}, seed=0)


def model_dir(registry: Registry, version: str) -> Path:
    """The version's driftloop model folder in the artifact store (a local folder here)."""
    uri = registry.client.get_model_version_download_uri(registry.model_name, version)
    path = Path(urlparse(uri).path) if uri.startswith("file:") else Path(uri)
    [manifest] = list(path.rglob(persist.MANIFEST))
    return manifest.parent


def test_a_version_carries_its_signature_and_loads(tracking_uri, artifact_root, model):
    registry = Registry(tracking_uri, MODEL, artifact_root=artifact_root)
    ref = registry.register_model(model, input_example=TEXTS[:2])
    tags = registry.version_tags(ref)
    assert tags[FORMAT_TAG] == persist.FORMAT and len(tags[MANIFEST_TAG]) == 64
    assert tags[SIGNATURE_TAG].startswith(
        f"ed25519:{signing.key_id(signing.public_of(os.environ['DRIFTLOOP_SIGNING_KEY']))}:"
    )
    assert registry.load(ref).predict(TEXTS) == model.predict(TEXTS)
    # no pickle among the files MLflow stores for it
    files = [p.name for p in model_dir(registry, ref.version).parent.parent.rglob("*") if p.is_file()]
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".joblib"))], files


def test_a_file_swapped_after_registration_is_refused(tracking_uri, artifact_root, model, tiny_frame, tmp_path):
    registry = Registry(tracking_uri, MODEL, artifact_root=artifact_root)
    ref = registry.register_model(model, input_example=TEXTS[:2])
    other = get_family("tfidf").fit(tiny_frame.sample(frac=1.0, random_state=1).head(60), {}, seed=1)
    persist.save(other, tmp_path / "other")
    target = model_dir(registry, ref.version)
    shutil.copy(tmp_path / "other" / "arrays.npz", target / "arrays.npz")
    with pytest.raises(ModelRefused, match=r"arrays\.npz: its SHA-256 differs"):
        registry.load(ref)
    # rewriting the manifest too does not help: the signature covers the manifest
    persist.write_manifest(target)
    with pytest.raises(ModelRefused, match=r"signature .* does not match"):
        registry.load(ref)


def test_a_version_signed_by_an_untrusted_key_is_refused(tracking_uri, artifact_root, model):
    intruder = Registry(
        tracking_uri, MODEL, artifact_root=artifact_root, trust=ModelTrust(signing_key=signing.generate().private)
    )
    ref = intruder.register_model(model, input_example=TEXTS[:2])
    assert intruder.load(ref).predict(TEXTS[:1])  # its own key: fine for itself
    with pytest.raises(ModelRefused, match="not trusted"):
        Registry(tracking_uri, MODEL, artifact_root=artifact_root).load(ref)


class _Payload:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_a_pickled_pyfunc_is_refused_and_its_payload_never_runs(tracking_uri, artifact_root, tmp_path):
    """A version logged the old way (a cloudpickled pyfunc whose unpickling would create a file),
    registered by someone who can write to the registry: refused unread."""
    from mlflow.pyfunc import PythonModel

    proof = tmp_path / "payload-ran"

    class Evil(PythonModel):
        def __init__(self):
            self.payload = _Payload(str(proof))

        def predict(self, context, model_input, params=None):
            return model_input

    registry = Registry(tracking_uri, MODEL, artifact_root=artifact_root)
    mlflow.set_tracking_uri(tracking_uri)
    try:
        with mlflow.start_run(experiment_id=registry.experiment_id()):
            info = mlflow.pyfunc.log_model(name="model", python_model=Evil(), pip_requirements=["mlflow"])
        version = registry.client.create_model_version(MODEL, source=info.model_uri, model_id=info.model_id)
    finally:
        mlflow.set_tracking_uri(None)
    assert not proof.exists()  # logging pickled it; nothing unpickled it yet
    with pytest.raises(ModelRefused, match="no 'model' artifact"):
        registry.load(ModelRef(MODEL, str(version.version)))
    assert not proof.exists()


def test_the_rest_source_refuses_a_tampered_version_and_serving_keeps_its_champion(mlflow_server, model, tmp_path):
    registry = Registry(mlflow_server, "trust-rest")
    v1 = registry.register_model(model, input_example=TEXTS[:2])
    v2 = registry.register_model(model, input_example=TEXTS[:2])
    registry.set_alias(CHAMPION, v1)
    source = RestModelSource(mlflow_server, "trust-rest")
    assert source.load(v1).predict(TEXTS) == model.predict(TEXTS)
    metrics = ServingMetrics()
    poller = RoutingPoller(source, metrics, interval_s=60)
    assert poller.poll_safely() and poller.current.ref == v1

    # someone with write access to the artifact store replaces v2's vocabulary, then moves champion
    with registry.conn.global_uri():
        downloaded = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=f"models:/trust-rest/{v2.version}", dst_path=str(tmp_path))
        )
    [manifest] = list(downloaded.rglob(persist.MANIFEST))
    vocab = json.loads((manifest.parent / "vocab-0.json").read_text())
    vocab[next(iter(vocab))] += 1
    (manifest.parent / "vocab-0.json").write_text(json.dumps(vocab))
    upload_over(mlflow_server, registry, v2.version, manifest.parent / "vocab-0.json")
    registry.set_alias(CHAMPION, v2)

    with pytest.raises(ModelRefused, match=r"vocab-0\.json: its SHA-256 differs"):
        source.load(v2)
    assert not poller.poll_safely()
    assert poller.current.ref == v1  # the champion keeps serving
    refused = metrics.errors.labels("model_refused")._value.get()
    assert refused == 1


def upload_over(server: str, registry: Registry, version: str, path: Path) -> None:
    """Overwrite one file of a version's model folder through the server's artifact proxy (what a
    client with write access to the artifact store can do)."""
    import httpx

    uri = registry.client.get_model_version_download_uri(registry.model_name, version)
    base = urlparse(uri).path.strip("/")
    listing = httpx.get(f"{server}/api/2.0/mlflow-artifacts/artifacts", params={"path": f"{base}/artifacts/model"})
    assert listing.status_code == 200, listing.text
    put = httpx.put(
        f"{server}/api/2.0/mlflow-artifacts/artifacts/{base}/artifacts/model/{path.name}", content=path.read_bytes()
    )
    assert put.status_code == 200, put.text
