"""The transformer family through the registry and the serving app: a tiny fine-tuned BERT is
logged to MLflow (SQLite), loaded back with its base model's folder deleted and the hub offline,
and served over real HTTP with batching and real token counts in /metrics and the prediction log."""

from __future__ import annotations

import asyncio
import shutil

import httpx
import numpy as np
import pytest

pytest.importorskip("torch")

from driftloop.adapters.predlog import read_predictions
from driftloop.adapters.registry import CHAMPION, Registry
from driftloop.config.settings import ServingSettings
from driftloop.models.families import get_family
from driftloop.serving.app import create_app
from tests.support import AUTH
from tests.support.data import tiny_frame
from tests.support.servers import serve_in_thread
from tests.support.serving import LABELS_V1 as LABELS, TEXTS, metric_samples, sample

CFG = ServingSettings(reload_interval_s=0.2, max_text_chars=200, max_batch=32, fsync_interval_s=0.2)


@pytest.fixture(scope="module")
def logged(banking_train, tiny_transformer_base, tracking_uri, artifact_root, tmp_path_factory):
    """A tiny model fine-tuned for a few steps from a copy of the base folder, registered as
    champion; the copy is deleted before anything loads it back."""
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("TRANSFORMERS_OFFLINE", "1")
    base = shutil.copytree(tiny_transformer_base, tmp_path_factory.mktemp("base") / "model")
    model = get_family("transformer").fit(
        tiny_frame(banking_train, LABELS),
        {"base_model": str(base), "mode": "finetune", "epochs": 1, "batch_size": 8, "learning_rate": 1e-3},
        seed=0,
    )
    registry = Registry(tracking_uri, "transformer-serving", artifact_root=artifact_root)
    ref = registry.register_model(model, input_example=TEXTS[:2])
    registry.set_alias(CHAMPION, ref)
    shutil.rmtree(base)
    yield registry, ref, model
    mp.undo()


def test_the_logged_model_pins_torch_and_transformers(logged, artifact_root):
    registry, ref, _ = logged
    # the version's source is models:/<logged model id>; its files live under that id
    model_id = registry.client.get_model_version(ref.name, ref.version).source.rsplit("/", 1)[-1]
    [requirements] = [p for p in artifact_root.rglob("requirements.txt") if model_id in str(p)]
    pins = dict(line.split("==") for line in requirements.read_text().split() if "==" in line)
    assert {"torch", "transformers", "tokenizers", "safetensors", "scikit-learn"} <= set(pins)
    assert "+" not in pins["torch"]  # the release, not the local "+cpu" wheel label


def test_it_loads_offline_without_its_base_folder(logged):
    registry, ref, model = logged
    loaded = registry.load(ref)
    assert loaded.family == "transformer" and loaded.labels == model.labels
    assert np.allclose(loaded.predict_proba(TEXTS), model.predict_proba(TEXTS), atol=1e-5)
    assert loaded.count_tokens(TEXTS[0]) == model.count_tokens(TEXTS[0]) == 8


def test_served_in_batches_with_real_token_counts(logged, tmp_path):
    registry, ref, model = logged
    with (
        serve_in_thread(create_app(CFG, registry, tmp_path)) as url,
        httpx.Client(base_url=url, timeout=60, headers=AUTH) as client,
    ):
        one = client.post("/predict", json={"text": TEXTS[0]})
        many = client.post("/predict", json={"texts": TEXTS})
        assert one.status_code == many.status_code == 200
        assert many.json()["model_version"] == ref.version
        expected = model.predict(TEXTS)
        answers = many.json()["predictions"]
        assert [a["intent"] for a in answers] == [p.intent for p in expected]
        assert [a["confidence"] for a in answers] == pytest.approx([p.confidence for p in expected], abs=1e-5)
        counts = [model.count_tokens(t) for t in TEXTS]
        # word pieces with [CLS] and [SEP]: "top - up failed twice" is 7, not 3 words
        assert counts[TEXTS.index("top-up failed twice")] == 7
        samples = metric_samples(client)
        slot = {"model_version": ref.version, "slot": "champion"}
        assert sample(samples, "driftloop_request_tokens_sum", **slot) == model.count_tokens(TEXTS[0]) + sum(counts)
        assert sample(samples, "driftloop_request_tokens_count", **slot) == 2
    logged_rows = read_predictions(tmp_path)
    by_text = logged_rows[logged_rows["text"].isin(TEXTS)].drop_duplicates("text").set_index("text")
    assert [int(by_text.loc[t, "tokens"]) for t in TEXTS] == counts


def test_concurrent_requests_share_forward_passes(logged, tmp_path):
    # 32 single-text requests at once: the model answers while others arrive, so they are
    # predicted together (serving.micro_batch_texts), each still getting its own answer.
    registry, ref, model = logged
    texts = [f"{TEXTS[i % len(TEXTS)]} #{i}" for i in range(32)]
    expected = {t: p.intent for t, p in zip(texts, model.predict(texts), strict=True)}

    async def send_all(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return await asyncio.gather(*(client.post("/predict", json={"text": t}) for t in texts))

    with (
        serve_in_thread(create_app(CFG, registry, tmp_path)) as url,
        httpx.Client(base_url=url, timeout=60, headers=AUTH) as client,
    ):
        answers = asyncio.run(send_all(url))
        assert [a.status_code for a in answers] == [200] * len(texts)
        assert [a.json()["predictions"][0]["intent"] for a in answers] == [expected[t] for t in texts]
        samples = metric_samples(client)
        slot = {"model_version": ref.version, "slot": "champion"}
        passes = sample(samples, "driftloop_batch_texts_count", **slot)
        assert sample(samples, "driftloop_batch_texts_sum", **slot) == len(texts)
        assert passes < len(texts)  # some requests shared a forward pass
