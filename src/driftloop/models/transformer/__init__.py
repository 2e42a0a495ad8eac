"""The transformer family: a sentence encoder (all-MiniLM-L6-v2 by default) classifying intents.

Two modes, chosen by ``model.params.mode``:

- ``frozen``: the encoder's mean-pooled, L2-normalised sentence embeddings into a multinomial
  logistic regression. One pass over the training texts (~50 s for BANKING77 on two cores) and a
  few seconds of scikit-learn; 93% test accuracy on BANKING77.
- ``finetune``: the whole encoder and a linear head trained with a plain PyTorch loop (AdamW,
  linear warm-up and decay), early-stopped on a stratified validation split of the training set.
  The head starts from the frozen mode's logistic regression ("linear probe, then fine-tune"):
  training starts at the probe's accuracy instead of chance, and a randomly initialised head
  would first distort the pretrained features while it catches up. Progress (step, loss, ETA)
  goes to ``progress`` and Python logging; a checkpoint keyed by the training set and the settings
  lets a crashed run resume from its last saved step.

Both modes give one :class:`TransformerIntentModel`: encoder → pooling → normalise → linear →
temperature-scaled softmax. It is saved as safetensors weights, tokenizer files and a NumPy head
(:mod:`driftloop.models.persist`, no pickle), so what the registry logs loads offline on any
machine with torch and transformers, with no reference to where the base model came from.

The modules, by responsibility:

- :mod:`.family`: :class:`TransformerFamily`, the fit (base model, embeddings, probe, mode);
- :mod:`.model`: :class:`TransformerIntentModel`, the trained classifier;
- :mod:`.base_model`: resolving, loading and the pooling of the pretrained base model;
- :mod:`.data`: the training rows and their stratified validation split;
- :mod:`.probe`: the linear probe (logistic regression on frozen embeddings);
- :mod:`.encoder`: the network (encoder, pooling, head) and the device;
- :mod:`.trainer`: the fine-tuning loop;
- :mod:`.schedule`: the learning-rate schedule (pure);
- :mod:`.budget`: the ``max_minutes`` time budget (injectable clock);
- :mod:`.checkpoint`: the checkpoint key and the checkpoint folder (atomic writes).

torch and transformers cost seconds to import, and the TF-IDF family (the default) never needs
them: this package and the modules it re-exports import neither; :mod:`.encoder` and
:mod:`.trainer` do, and are imported only to train or predict. The settings
(:class:`~driftloop.config.transformer.TransformerParams`) live in the config layer.
"""

from __future__ import annotations

from driftloop.config.transformer import BUNDLED_MINILM, TransformerParams
from driftloop.models.base import fit_temperature
from driftloop.models.ensemble import EnsembleFamily, EnsembleIntentModel
from driftloop.models.transformer.base_model import resolve_base_model
from driftloop.models.transformer.checkpoint import TrainingInterrupted, checkpoint_key
from driftloop.models.transformer.data import validation_split
from driftloop.models.transformer.family import TransformerFamily
from driftloop.models.transformer.model import PIP_PACKAGES, TransformerIntentModel

__all__ = [
    "BUNDLED_MINILM",
    "PIP_PACKAGES",
    "EnsembleFamily",
    "EnsembleIntentModel",
    "TrainingInterrupted",
    "TransformerFamily",
    "TransformerIntentModel",
    "TransformerParams",
    "checkpoint_key",
    "fit_temperature",
    "resolve_base_model",
    "validation_split",
]
