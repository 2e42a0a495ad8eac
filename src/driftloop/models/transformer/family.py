"""``model.family: transformer``: load the base model, embed the training set, fit the linear
probe, then either keep it (frozen mode) or fine-tune from it (:mod:`.trainer`).

torch-free at import: torch, the encoder and the trainer are imported when a model is fitted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from driftloop.config.transformer import TransformerParams
from driftloop.models.transformer.base_model import load_base, pooling_for, resolve_base_model
from driftloop.models.transformer.checkpoint import Checkpointer, checkpoint_key
from driftloop.models.transformer.data import TrainingData
from driftloop.models.transformer.model import TransformerIntentModel
from driftloop.models.transformer.probe import ProbeHead, probe_head

log = logging.getLogger(__name__)


def _sayer(progress: Callable[[str], None] | None) -> Callable[[str], None]:
    def say(message: str) -> None:
        log.info(message)
        if progress is not None:
            progress(message)

    return say


class TransformerFamily:
    """``model.family: transformer``; ``model.params.mode`` picks frozen embeddings + LR or full
    fine-tuning (see :mod:`driftloop.models.transformer`)."""

    name = "transformer"

    def fit(
        self,
        train: pd.DataFrame,
        params: dict[str, Any],
        seed: int = 0,
        progress: Callable[[str], None] | None = None,
        checkpoint_root: Path | None = None,
    ) -> TransformerIntentModel:
        """Train on ``train`` with the family's keys of ``params``; progress messages go to
        ``progress`` and logging, and fine-tuning checkpoints under ``checkpoint_root`` (keyed by
        :func:`~.checkpoint.checkpoint_key`) when given."""
        import torch

        p = TransformerParams.from_params(params)
        say = _sayer(progress)
        data = TrainingData.from_frame(train, p.validation_fraction, seed)
        torch.manual_seed(seed)
        base = resolve_base_model(p.base_model)
        pooling = pooling_for(base, p.pooling)
        encoder, tokenizer = load_base(base)
        started = time.perf_counter()
        emb = self._embed(encoder, tokenizer, p, base, pooling, data, say)
        info: dict[str, Any] = {"mode": p.mode, "base_model": p.base_model, "pooling": pooling}
        head = None
        if p.mode == "frozen" or p.head_init == "probe":
            refit = p.mode == "frozen"
            head = probe_head(
                emb,
                data.y,
                data.held,
                n_labels=len(data.labels),
                c_value=p.head_C,
                seed=seed,
                refit_on_all=refit,
                say=say,
            )
            info.update(head.info)
        if p.mode == "frozen" and head is not None:
            info["fit_s"] = round(time.perf_counter() - started, 1)
            say(f"frozen {len(data.labels)} intents on {len(data.texts)} rows in {info['fit_s']}s")
            return self._model(
                encoder, tokenizer, p, pooling, data.labels, head.weight, head.bias, head.temperature, info
            )
        folder = checkpoint_root / checkpoint_key(train, p, seed) if checkpoint_root else None
        return self._finetune(encoder, tokenizer, data, p, pooling, seed, say, folder, head, info, started)

    def _embed(
        self,
        encoder: Any,
        tokenizer: Any,
        p: TransformerParams,
        base: str,
        pooling: str,
        data: TrainingData,
        say: Callable[[str], None],
    ) -> np.ndarray:
        """The base encoder's sentence embeddings of the training texts (the probe's input)."""
        from driftloop.models.transformer.encoder import pick_device

        started = time.perf_counter()
        say(
            f"{p.mode}: embedding {len(data.texts)} texts with {Path(base).name or base} "
            f"(pooling {pooling}, max_length {p.max_length}, device {pick_device(p.device)})"
        )
        emb = self._model(encoder, tokenizer, p, pooling, data.labels).embed(data.texts)
        say(f"embedded {len(data.texts)} texts in {time.perf_counter() - started:.1f}s")
        return emb

    @staticmethod
    def _finetune(
        encoder: Any,
        tokenizer: Any,
        data: TrainingData,
        p: TransformerParams,
        pooling: str,
        seed: int,
        say: Callable[[str], None],
        folder: Path | None,
        head: ProbeHead | None,
        info: dict[str, Any],
        started: float,
    ) -> TransformerIntentModel:
        from driftloop.models.transformer.trainer import Trainer

        result = Trainer(
            encoder,
            tokenizer,
            data,
            p,
            pooling=pooling,
            seed=seed,
            say=say,
            checkpointer=Checkpointer(folder) if folder is not None else None,
            head=(head.weight, head.bias) if head is not None else None,
            fit_started=started,
        ).run()
        info.update(result.info())
        return TransformerIntentModel(
            result.encoder,
            tokenizer,
            result.weight,
            result.bias,
            data.labels,
            result.temperature,
            pooling=pooling,
            max_length=p.max_length,
            predict_batch_size=p.predict_batch_size,
            info=info,
        )

    @staticmethod
    def _model(
        encoder: Any,
        tokenizer: Any,
        p: TransformerParams,
        pooling: str,
        labels: list[str],
        weight: np.ndarray | None = None,
        bias: np.ndarray | None = None,
        temperature: float = 1.0,
        info: dict[str, Any] | None = None,
    ) -> TransformerIntentModel:
        """A model of ``encoder`` with the given head (zeros when None: an embedder)."""
        hidden = encoder.config.hidden_size
        return TransformerIntentModel(
            encoder,
            tokenizer,
            weight if weight is not None else np.zeros((len(labels), hidden)),
            bias if bias is not None else np.zeros(len(labels)),
            labels,
            temperature,
            pooling=pooling,
            max_length=p.max_length,
            predict_batch_size=p.predict_batch_size,
            info=info,
        )
