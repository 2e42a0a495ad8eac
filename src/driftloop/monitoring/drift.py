"""Drift between a window of production predictions (current) and the champion's reference.

The only module that imports Evidently. Its results become a typed :class:`DriftResult` here,
read by metric id from the snapshot, never by position in its JSON.

Both frames have ``text``, ``intent`` (the predicted label) and ``confidence``; ``current`` may
also carry ``request_id``, ``time`` and ``label`` (feedback, often missing). Three signals:

- ``text_drift``: ROC AUC of Evidently's domain classifier (TF-IDF + linear model telling
  reference texts from current ones), on texts de-duplicated first: repeats of the same texts
  let it memorise rather than generalise and raised false alarms (AUC 0.64 on a window resampled
  with replacement from the reference itself). Both frames are de-duplicated, and the AUC is the
  mean over a few splits (:func:`_text_aucs`).
- ``intent_drift``: Jensen-Shannon distance between the predicted-intent distributions
  (Evidently ``ValueDrift``, method ``jensenshannon``). Unseen intents land on whichever known
  intents they resemble, which bends this distribution.
- ``confidence_drop``: reference mean confidence minus current mean confidence. Texts of unseen
  intents get low confidences. The mean separated quiet and drifted windows better than the
  share below ``low_confidence``: with 35% unseen intents both move by ~0.13, but the share's
  no-drift spread is 0.012 against the mean's 0.008 (windows of 400 on BANKING77).

A fourth signal when the champion exposes ``embed(texts)`` (the transformer family):

- ``embedding_drift``: Evidently's embedding drift (``ModelDriftMethod``: a domain classifier on
  the model's own sentence embeddings, its ROC AUC) between the distinct reference and current
  texts, the mean over the same reorderings as text drift, calibrated the same way. It sees
  meaning rather than words: a paraphrase of a known intent stays close, a new topic does not.
  The value comes from the method itself; the ``EmbeddingsDrift`` metric (the same method plus a
  t-SNE plot that costs seconds) is in the HTML report only.

Text length and word count are shown in the HTML report only: on BANKING77 they call the train
and test splits drifted (test texts are 9% shorter), so they must not decide anything.

Thresholds are not Evidently's defaults but the reference's own variation (:func:`calibrate`).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from driftloop.config.settings import MonitorSettings
from driftloop.core.types import DriftResult, SignalResult

if TYPE_CHECKING:  # for annotations only: importing Evidently takes seconds (see _run)
    from evidently import DataDefinition
    from evidently.core.datasets import Descriptor
    from evidently.core.metric_types import Metric
    from evidently.core.report import Snapshot

TEXT_DRIFT = "text_drift"
INTENT_DRIFT = "intent_drift"
CONFIDENCE_DROP = "confidence_drop"
SIGNALS: tuple[str, ...] = (TEXT_DRIFT, INTENT_DRIFT, CONFIDENCE_DROP)
# Only for a champion with `embed` (see the module docstring); every calibration has SIGNALS.
EMBEDDING_DRIFT = "embedding_drift"
_EMBEDDING = "text_embedding"
Embedder = Callable[[Sequence[str]], np.ndarray]

_COLUMNS = ("text", "intent", "confidence")
# Evidently's text drift method that returns the domain classifier's ROC AUC without the
# bootstrap of 1000 random classifiers ("perc_text_content_drift", its default below 1000
# reference rows): we compare the AUC with our own calibrated threshold, not a p-value.
_TEXT_METHOD = "abs_text_content_drift"
_INTENT_METHOD = "jensenshannon"
# Text drift is the mean AUC over this many splits (see _text_aucs): 3 took the spread of one
# window's value from 0.023 to 0.012; 5 gained little more for two thirds more time.
_TEXT_SPLITS = 3
_CALIBRATION_VERSION = 2


class WindowTooSmall(ValueError):
    """Fewer distinct texts than ``min_window``: too few to judge drift."""


@dataclass(frozen=True)
class SignalThreshold:
    """One signal's calibrated threshold and the no-drift values calibration measured.

    ``seen`` are on the scale of the real comparison: the measured values' distance from "no
    difference" times ``scale`` (1 where calibration could compare window-sized samples).
    """

    name: str
    threshold: float
    seen: tuple[float, ...]
    scale: float = 1.0


@dataclass(frozen=True)
class Calibration:
    """Per-signal thresholds for one reference and window size.

    Worth caching (``to_json``/``from_json``) by (reference hash, model version, window size):
    it runs Evidently four times per round, 2-3 s in all on two cores.
    """

    reference_hash: str
    window_n: int
    n_reference: int
    seed: int
    margin: float
    signals: tuple[SignalThreshold, ...]

    def has(self, name: str) -> bool:
        return any(s.name == name for s in self.signals)

    def threshold(self, name: str) -> float:
        for signal in self.signals:
            if signal.name == name:
                return signal.threshold
        raise KeyError(f"calibration has no signal '{name}' (has {[s.name for s in self.signals]})")

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": _CALIBRATION_VERSION,
                "reference_hash": self.reference_hash,
                "window_n": self.window_n,
                "n_reference": self.n_reference,
                "seed": self.seed,
                "margin": self.margin,
                "signals": [
                    {"name": s.name, "threshold": s.threshold, "seen": list(s.seen), "scale": s.scale}
                    for s in self.signals
                ],
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        data = json.loads(text)
        # A cache written by an older layout must be recomputed, not half-read.
        if data.get("version") != _CALIBRATION_VERSION:
            raise ValueError(f"calibration version {data.get('version')!r}, expected {_CALIBRATION_VERSION}")
        signals = tuple(
            SignalThreshold(
                str(s["name"]), float(s["threshold"]), tuple(float(v) for v in s["seen"]), float(s["scale"])
            )
            for s in data["signals"]
        )
        missing = sorted(set(SIGNALS) - {s.name for s in signals})
        if missing:
            raise ValueError(f"calibration lacks signal(s) {missing}")
        return cls(
            reference_hash=str(data["reference_hash"]),
            window_n=int(data["window_n"]),
            n_reference=int(data["n_reference"]),
            seed=int(data["seed"]),
            margin=float(data["margin"]),
            signals=signals,
        )


def window_id_for(request_ids: Iterable[str]) -> str:
    """A stable id for a window: the same set of request ids, in any order, gives the same id."""
    ids = sorted({str(r) for r in request_ids})
    # JSON, not a join: no separator can occur inside an id and make two windows collide.
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]


def reference_hash(reference: pd.DataFrame) -> str:
    """Hash of a reference's texts and the champion's predictions on them (a cache key part)."""
    rows = _distinct(reference)[list(_COLUMNS)]
    payload = json.dumps(sorted(zip(rows["text"], rows["intent"], rows["confidence"].round(6), strict=True)))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _distinct(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per text (the first), compared case- and space-insensitively."""
    missing = [c for c in _COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"drift: frame lacks column(s) {missing}; has {list(frame.columns)}")
    key = frame["text"].astype(str).str.lower().str.split().str.join(" ")
    out = frame.loc[~key.duplicated(), list(_COLUMNS)].reset_index(drop=True)
    out["text"] = out["text"].astype(str)
    out["intent"] = out["intent"].astype(str)
    out["confidence"] = out["confidence"].astype(float)
    return out


def _definition(columns: Iterable[str]) -> DataDefinition:
    """Column types stated, not inferred: Evidently would guess a text with few distinct values
    to be categorical, and an intent column with many to be text."""
    from evidently import DataDefinition

    present = set(columns)
    return DataDefinition(
        text_columns=[c for c in ("text",) if c in present],
        categorical_columns=[c for c in ("intent",) if c in present],
        numerical_columns=[c for c in ("confidence",) if c in present],
    )


def _run(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    metrics: list[Metric],
    descriptors: list[Descriptor] | None = None,
    embeddings: list[str] | None = None,
) -> Snapshot:
    """One Evidently run; its snapshot is read by metric id only."""
    # Imported here, not at module level: importing Evidently takes ~9 s, and flows import this
    # module long before (or without) a monitor run.
    from evidently import Dataset, Report

    definition = _definition(current.columns)
    if embeddings:
        definition.embeddings = {_EMBEDDING: embeddings}
    with warnings.catch_warnings():
        # Evidently's domain classifier stops SGD at 50 iterations and sklearn warns every time.
        warnings.filterwarnings("ignore", message="Maximum number of iteration")
        return Report(metrics).run(
            Dataset.from_pandas(current, data_definition=definition, descriptors=descriptors),
            Dataset.from_pandas(reference, data_definition=definition, descriptors=descriptors),
        )


def _text_aucs(reference: pd.DataFrame, current: pd.DataFrame) -> tuple[float, ...]:
    """Evidently's text drift (domain classifier ROC AUC), once per reordering of the rows.

    The classifier is trained on one fixed 50/50 split of the rows, and which texts land in which
    half matters: over windows with 35% unseen intents the AUC spread 0.023 with one split and
    0.012 with the mean of three, against the 0.09 the unseen intents add. Each reordering gives
    another split; their mean is the signal.
    """
    from evidently.metrics import ValueDrift

    values = []
    for split in range(_TEXT_SPLITS):
        ref = reference if split == 0 else reference.sample(frac=1, random_state=split)
        cur = current if split == 0 else current.sample(frac=1, random_state=split)
        metric = ValueDrift(column="text", method=_TEXT_METHOD)
        snapshot = _run(ref[["text"]], cur[["text"]], [metric])
        values.append(float(snapshot.metric_results[metric.metric_id].value))
    return tuple(values)


def _embedding_aucs(reference: np.ndarray, current: np.ndarray) -> tuple[float, ...]:
    """Evidently's embedding drift (domain classifier ROC AUC on the embeddings), once per
    reordering of the rows, as :func:`_text_aucs` does for the texts."""
    from evidently.metrics.embeddings import ModelDriftMethod

    method = ModelDriftMethod(bootstrap=False)
    values = []
    for split in range(_TEXT_SPLITS):
        ref, cur = reference, current
        if split:
            ref = reference[np.random.default_rng(split).permutation(len(reference))]
            cur = current[np.random.default_rng(split + 100).permutation(len(current))]
        # The method adds a target column to the frames it gets: fresh frames every time.
        score, _, _ = method(pd.DataFrame(cur), pd.DataFrame(ref))
        values.append(float(score))
    return tuple(values)


def _prediction_signals(reference: pd.DataFrame, current: pd.DataFrame) -> tuple[float, float]:
    """(Jensen-Shannon distance of predicted intents, drop in mean confidence)."""
    from evidently.metrics import MeanValue, ValueDrift

    intents = ValueDrift(column="intent", method=_INTENT_METHOD)
    confidence = MeanValue(column="confidence")
    cols = ["intent", "confidence"]
    snapshot = _run(reference[cols], current[cols], [intents, confidence])
    results = snapshot.metric_results
    reference_mean = snapshot.context.get_reference_metric_result(confidence.metric_id).value
    return (float(results[intents.metric_id].value), float(reference_mean) - float(results[confidence.metric_id].value))


def _save_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    thresholds: dict[str, float],
    path: Path,
    embeddings: tuple[np.ndarray, np.ndarray] | None = None,
) -> None:
    """The HTML report people read: the three signals (text drift on the first split) with our
    thresholds, embedding drift when there are embeddings, and text length and word count for
    context only."""
    from evidently.descriptors import TextLength, WordCount
    from evidently.metrics import MeanValue, ValueDrift

    metrics = [
        ValueDrift(column="text", method=_TEXT_METHOD, threshold=thresholds[TEXT_DRIFT]),
        ValueDrift(column="intent", method=_INTENT_METHOD, threshold=thresholds[INTENT_DRIFT]),
        MeanValue(column="confidence"),
        # Means with their distributions, not drift tests: on BANKING77 a length test calls even
        # train vs test drifted, and a verdict in the report would contradict ours.
        MeanValue(column="text_length"),
        MeanValue(column="word_count"),
    ]
    descriptors = [TextLength("text", alias="text_length"), WordCount("text", alias="word_count")]
    columns = None
    if embeddings is not None:
        from evidently.metrics.embeddings import EmbeddingsDrift, ModelDriftMethod

        columns = [f"emb_{i}" for i in range(embeddings[0].shape[1])]
        reference = pd.concat([reference.reset_index(drop=True), pd.DataFrame(embeddings[0], columns=columns)], axis=1)
        current = pd.concat([current.reset_index(drop=True), pd.DataFrame(embeddings[1], columns=columns)], axis=1)
        metrics.append(
            EmbeddingsDrift(
                embeddings_name=_EMBEDDING,
                drift_method=ModelDriftMethod(bootstrap=False, threshold=thresholds[EMBEDDING_DRIFT]),
            )
        )
    snapshot = _run(reference, current, metrics, descriptors, embeddings=columns)
    path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(path))


def _auc_spread(n_reference: int, n_current: int) -> float:
    """Standard deviation of a no-drift ROC AUC when Evidently's domain classifier compares
    these many texts: it is scored on half of each side (Mann-Whitney: (a+b+1) / 12ab)."""
    a, b = n_reference / 2, n_current / 2
    return float(np.sqrt((a + b + 1) / (12 * a * b)))


def min_reference_size(cfg: MonitorSettings) -> int:
    """Distinct reference texts calibration needs: two sides of at least ``min_window`` each."""
    return 2 * cfg.min_window


def calibrate(
    reference: pd.DataFrame,
    window_n: int,
    cfg: MonitorSettings,
    reference_is_sample: bool = False,
    embed: Embedder | None = None,
) -> Calibration:
    """Thresholds from the reference's own variation, deterministic for ``cfg.seed``.

    With ``embed`` (the champion's sentence embeddings) embedding drift is calibrated too, on the
    same two parts of the reference as text drift and scaled the same way.

    Each of ``calibration_rounds`` rounds measures every signal on a no-drift pair drawn from
    the reference with the same Evidently metrics detection uses; a threshold is the worst value
    seen plus ``margin``, the text AUC never below ``text_auc_floor``.

    - text: a random part of the reference, window-sized but at most half of it, against the
      rest. Texts must not repeat across the two sides (repeats are what the domain classifier
      memorises), so with a window larger than half the reference both sides are smaller than
      in the real comparison, and their AUCs spread wider around 0.5. Each AUC's distance from
      0.5 is scaled by the ratio of the two spreads (see :func:`_auc_spread`): unscaled, the
      worst of 12 rounds reached 0.549 and put the threshold at 0.569, above a third of the
      windows with 35% unseen intents.
    - intents and confidence: ``window_n`` predictions drawn with replacement from the reference
      against the whole reference, i.e. a window of the reference's own traffic. Halves
      overstate the noise here: the Jensen-Shannon distance of 67 intents is mostly sampling
      noise at these sizes, and on BANKING77 it was 0.23-0.29 between reference halves of 268
      rows, against 0.09-0.16 for 400 fresh known-intent texts and 0.19-0.24 for windows with 35%
      unseen intents; halves would have made the intent signal unable to fire. Texts play no
      part in these two signals, so repeated rows do no harm.
      That holds for a label-stratified reference, whose intent mix is exact. A reference that is
      itself a random sample of production (``reference_is_sample``, e.g. the one a retrain
      refreshes from recent traffic) carries its own sampling noise, so each round compares a
      bootstrap replica of the reference with the window: without it, a steady-state window of
      400 against a 400-text production reference scored 0.25 against a threshold of 0.22.
    """
    ref = _distinct(reference)
    if len(ref) < min_reference_size(cfg):
        raise ValueError(
            f"reference has {len(ref)} distinct texts; calibration needs 2 x min_window = {min_reference_size(cfg)}"
        )
    k = min(window_n, len(ref) // 2)
    text_scale = _auc_spread(len(ref), window_n) / _auc_spread(len(ref) - k, k)
    rng = np.random.default_rng(cfg.seed)
    names = SIGNALS + ((EMBEDDING_DRIFT,) if embed is not None else ())
    vectors = np.asarray(embed(ref["text"].tolist()), dtype=np.float32) if embed is not None else None
    seen: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(cfg.calibration_rounds):
        order = rng.permutation(len(ref))
        aucs = _text_aucs(ref.iloc[order[k:]], ref.iloc[order[:k]])
        seen[TEXT_DRIFT].append(0.5 + (float(np.mean(aucs)) - 0.5) * text_scale)
        if vectors is not None:
            emb_aucs = _embedding_aucs(vectors[order[k:]], vectors[order[:k]])
            seen[EMBEDDING_DRIFT].append(0.5 + (float(np.mean(emb_aucs)) - 0.5) * text_scale)
        window = ref.iloc[rng.integers(0, len(ref), size=window_n)]
        # drawn either way, so the flag changes nothing else in the random sequence
        replica = rng.integers(0, len(ref), size=len(ref))
        base = ref.iloc[replica] if reference_is_sample else ref
        intent_js, confidence_drop = _prediction_signals(base, window)
        seen[INTENT_DRIFT].append(intent_js)
        seen[CONFIDENCE_DROP].append(confidence_drop)
    floors = {
        TEXT_DRIFT: cfg.text_auc_floor,
        INTENT_DRIFT: 0.0,
        # Confidence going up is never drift: the threshold stays a drop.
        CONFIDENCE_DROP: 0.0,
        EMBEDDING_DRIFT: cfg.text_auc_floor,  # an AUC like text drift's
    }
    scales = {TEXT_DRIFT: text_scale, INTENT_DRIFT: 1.0, CONFIDENCE_DROP: 1.0, EMBEDDING_DRIFT: text_scale}
    signals = tuple(
        SignalThreshold(name, max(floors[name], max(seen[name]) + cfg.margin), tuple(seen[name]), scales[name])
        for name in names
    )
    return Calibration(
        reference_hash=reference_hash(reference),
        window_n=int(window_n),
        n_reference=len(ref),
        seed=cfg.seed,
        margin=cfg.margin,
        signals=signals,
    )


def _time_range(current: pd.DataFrame) -> tuple[datetime | None, datetime | None]:
    if "time" not in current.columns:
        return None, None
    with warnings.catch_warnings():
        # pandas warns about mixed offsets (handled just below) and about guessing a format.
        warnings.simplefilter("ignore")
        # Naive times stay naive and aware ones keep their zone: the caller compares them with
        # its own clock.
        times = pd.to_datetime(current["time"], errors="coerce")
        if not pd.api.types.is_datetime64_any_dtype(times):
            # Offsets that differ from row to row cannot share one zone; UTC holds them all.
            times = pd.to_datetime(current["time"], errors="coerce", utc=True)
    times = times.dropna()
    if times.empty:
        return None, None
    return times.min().to_pydatetime(), times.max().to_pydatetime()


def _live_accuracy(current: pd.DataFrame) -> tuple[float | None, int]:
    if "label" not in current.columns:
        return None, 0
    # Per request, not per distinct text: each feedback label is a separate observation.
    labelled = current[current["label"].notna() & (current["label"].astype(str).str.len() > 0)]
    if labelled.empty:
        return None, 0
    hits = (labelled["intent"].astype(str) == labelled["label"].astype(str)).mean()
    return float(hits), len(labelled)


def detect_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    cfg: MonitorSettings,
    calibration: Calibration | None = None,
    report_path: Path | None = None,
    window_id: str = "",
    embed: Embedder | None = None,
) -> DriftResult:
    """Judge one window: each signal against its calibrated threshold, drift when at least
    ``cfg.min_signals`` fire. With ``embed`` (the champion's sentence embeddings), embedding
    drift is one more signal; the calibration must then have it.

    ``n_current`` counts the distinct texts tested; accuracy uses every labelled request.
    Without ``window_id`` the id comes from ``request_id`` (or, lacking it, the texts).
    Raises :class:`WindowTooSmall` below ``cfg.min_window`` distinct texts.
    """
    cur = _distinct(current)
    ref = _distinct(reference)
    if len(cur) < cfg.min_window:
        raise WindowTooSmall(
            f"window has {len(cur)} distinct texts (of {len(current)} rows); monitor.min_window is {cfg.min_window}"
        )
    if calibration is None:
        calibration = calibrate(reference, len(cur), cfg, embed=embed)
    elif calibration.reference_hash != reference_hash(reference):
        # A cached calibration of another reference (or another champion's predictions) would
        # judge with the wrong thresholds, silently.
        raise ValueError(f"calibration is for reference {calibration.reference_hash}, not {reference_hash(reference)}")
    if embed is not None and not calibration.has(EMBEDDING_DRIFT):
        raise ValueError(
            "embedding drift asked for, but the calibration has no embedding_drift threshold "
            "(calibrate with the same embed)"
        )
    names = SIGNALS + ((EMBEDDING_DRIFT,) if embed is not None else ())
    thresholds = {name: calibration.threshold(name) for name in names}
    aucs = _text_aucs(ref, cur)
    intent_js, confidence_drop = _prediction_signals(ref, cur)
    values = {TEXT_DRIFT: float(np.mean(aucs)), INTENT_DRIFT: intent_js, CONFIDENCE_DROP: confidence_drop}
    vectors = None
    emb_aucs: tuple[float, ...] = ()
    if embed is not None:
        vectors = (
            np.asarray(embed(ref["text"].tolist()), dtype=np.float32),
            np.asarray(embed(cur["text"].tolist()), dtype=np.float32),
        )
        emb_aucs = _embedding_aucs(*vectors)
        values[EMBEDDING_DRIFT] = float(np.mean(emb_aucs))
    if report_path is not None:
        _save_report(ref, cur, thresholds, report_path, vectors)
    details = {
        EMBEDDING_DRIFT: (
            f"domain classifier ROC AUC on the model's sentence embeddings, mean of "
            f"{len(emb_aucs)} splits ({', '.join(f'{a:.3f}' for a in emb_aucs)})"
        ),
        TEXT_DRIFT: (
            f"domain classifier ROC AUC, mean of {len(aucs)} splits "
            f"({', '.join(f'{a:.3f}' for a in aucs)}); {len(cur)} distinct of {len(current)} texts"
        ),
        INTENT_DRIFT: "Jensen-Shannon distance of predicted intents",
        CONFIDENCE_DROP: f"mean confidence {cur['confidence'].mean():.3f} vs reference {ref['confidence'].mean():.3f}",
    }
    signals = tuple(
        SignalResult(
            name=name,
            value=values[name],
            threshold=thresholds[name],
            drifted=values[name] > thresholds[name],
            detail=details[name],
        )
        for name in names
    )
    fired = sum(s.drifted for s in signals)
    if not window_id:
        ids = current["request_id"] if "request_id" in current.columns else cur["text"]
        window_id = window_id_for(ids)
    start, end = _time_range(current)
    accuracy, n_labelled = _live_accuracy(current)
    return DriftResult(
        window_id=window_id,
        window_start=start,
        window_end=end,
        n_reference=len(ref),
        n_current=len(cur),
        signals=signals,
        drift_detected=fired >= cfg.min_signals,
        share_drifted=fired / len(signals),
        report_path=str(report_path) if report_path is not None else "",
        accuracy=accuracy,
        n_labelled=n_labelled,
    )
