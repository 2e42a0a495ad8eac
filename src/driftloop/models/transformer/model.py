"""The trained transformer classifier, as the registry saves it (driftloop.models.persist) and the
serving app loads it.

torch-free at import: loading a model imports nothing heavy; torch, transformers and the
encoder module are imported on the first prediction.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from driftloop.core.types import Prediction
from driftloop.models.base import softmax

# What the model needs at inference, pinned by the registry (adapters.registry.store.requirements).
PIP_PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "scikit-learn", "numpy")


class TransformerIntentModel:
    """Encoder → pooled, normalised embedding → linear head → softmax / temperature.

    Texts are predicted in batches of ``predict_batch_size``, sorted by length so each batch pads
    to about its own longest text. Thread-safe: the serving app predicts from several threads,
    and a fast tokenizer raises "Already borrowed" when two threads call it at once. It pickles
    with its weights and tokenizer files inside, so it loads offline with no reference to where
    the base model came from.
    """

    family = "transformer"
    pip_packages = PIP_PACKAGES
    # The serving app predicts up to this many texts on its event loop: none, a forward pass takes
    # milliseconds (the TF-IDF model's 0.3 ms is why inline exists at all).
    inline_texts = 0

    def __init__(
        self,
        encoder: Any,
        tokenizer: Any,
        weight: np.ndarray,
        bias: np.ndarray,
        labels: Sequence[str],
        temperature: float,
        *,
        pooling: str,
        max_length: int,
        predict_batch_size: int,
        info: dict[str, Any] | None = None,
        family: str = "transformer",
    ):
        self.labels = tuple(labels)
        self.weight = np.asarray(weight, dtype=np.float32)  # (labels, hidden)
        self.bias = np.asarray(bias, dtype=np.float32)
        self.temperature = float(temperature)
        self.pooling = pooling
        self.max_length = int(max_length)
        self.predict_batch_size = int(predict_batch_size)
        self.info = dict(info or {})  # how it was trained (logged as params)
        self.family = family
        self._encoder = encoder
        self._tokenizer = tokenizer
        self._files: dict[str, bytes] | None = None
        self._lock = threading.RLock()
        self._device: str | None = None

    # -- persistence: weights and tokenizer travel inside the pickle -----------------------------
    def _export(self) -> dict[str, bytes]:
        if self._files is None:
            with tempfile.TemporaryDirectory() as tmp:
                self._encoder.save_pretrained(tmp, safe_serialization=True)
                self._tokenizer.save_pretrained(tmp)
                self._files = {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
        return self._files

    def __getstate__(self) -> dict[str, Any]:
        """The attributes, with the encoder and tokenizer as their saved files."""
        with self._lock:
            files = self._export()
        state = {k: v for k, v in self.__dict__.items() if k not in ("_encoder", "_tokenizer", "_lock", "_device")}
        state["_files"] = files
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore the attributes; the encoder and tokenizer are rebuilt on first use."""
        self.__dict__.update(state)
        self._encoder = self._tokenizer = None
        self._device = None
        self._lock = threading.RLock()

    def _ready(self) -> tuple[Any, Any]:
        """The encoder and tokenizer, rebuilt from their saved files on first use (offline)."""
        with self._lock:
            if self._encoder is None:
                from transformers import AutoModel, AutoTokenizer

                with tempfile.TemporaryDirectory() as tmp:
                    for name, data in (self._files or {}).items():
                        (Path(tmp) / name).write_bytes(data)
                    self._tokenizer = AutoTokenizer.from_pretrained(tmp, local_files_only=True)
                    self._encoder = AutoModel.from_pretrained(tmp, local_files_only=True, use_safetensors=True)
            if self._device is None:
                from driftloop.models.transformer.encoder import pick_device

                self._device = pick_device("auto")
                self._encoder.to(self._device).eval()
            return self._encoder, self._tokenizer

    # -- the TextClassifier protocol -----------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        """Word pieces the encoder sees, [CLS] and [SEP] included, after truncation."""
        _, tokenizer = self._ready()
        with self._lock:
            return len(tokenizer(text, truncation=True, max_length=self.max_length)["input_ids"])

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Sentence embeddings, shape (len(texts), hidden), L2-normalised (for embedding drift)."""
        import torch

        from driftloop.models.transformer.encoder import pool

        encoder, tokenizer = self._ready()
        out = np.zeros((len(texts), encoder.config.hidden_size), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        with torch.inference_mode():
            for start in range(0, len(texts), self.predict_batch_size):
                rows = order[start : start + self.predict_batch_size]
                with self._lock:
                    batch = tokenizer(
                        [str(texts[i]) for i in rows],
                        padding=True,
                        truncation=True,
                        max_length=self.max_length,
                        return_tensors="pt",
                    )
                batch = {k: v.to(self._device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
                hidden = encoder(**batch).last_hidden_state
                out[rows] = pool(hidden, batch["attention_mask"], self.pooling).cpu().numpy()
        return out

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """The head's logits, shape (len(texts), len(labels)), before the temperature."""
        out: np.ndarray = self.embed(texts) @ self.weight.T + self.bias
        return out

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Temperature-scaled softmax probabilities, shape (len(texts), len(labels))."""
        if len(texts) == 0:
            return np.zeros((0, len(self.labels)))
        return softmax(self.logits(texts).astype(np.float64), self.temperature)

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        """The most likely label of each text, with its probability."""
        proba = self.predict_proba(texts)
        best = proba.argmax(axis=1)
        return [Prediction(self.labels[j], float(proba[i, j])) for i, j in enumerate(best)]
