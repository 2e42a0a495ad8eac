"""The linear probe: a multinomial logistic regression on frozen sentence embeddings.

It is the frozen mode's head, and the starting head of fine-tuning ("linear probe, then
fine-tune"). scikit-learn is imported when a probe is fitted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from driftloop.models.base import fit_temperature


def fit_probe(emb: np.ndarray, y: np.ndarray, c_value: float, seed: int) -> Any:
    """A fitted scikit-learn ``LogisticRegression`` (C = ``c_value``) of ``y`` on ``emb``."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=c_value, max_iter=2000, random_state=seed)
    clf.fit(emb, y)
    return clf


def full_logits(clf: Any, emb: np.ndarray, n_labels: int) -> np.ndarray:
    """Logits over every label (a split may miss a label; its logit is -inf-like)."""
    out = np.full((len(emb), n_labels), -1e4)
    out[:, clf.classes_] = clf.decision_function(emb) if len(clf.classes_) > 2 else _binary(clf, emb)
    return out


def _binary(clf: Any, emb: np.ndarray) -> np.ndarray:
    score = clf.decision_function(emb)
    return np.stack([-score / 2, score / 2], axis=1)


def full_head(clf: Any, n_labels: int, hidden: int) -> tuple[np.ndarray, np.ndarray]:
    """The probe as a linear head over every label: weight (labels, hidden) and bias (labels);
    labels the probe never saw get a bias of -1e4. A binary probe's one score is split into two
    symmetric logits."""
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


@dataclass(frozen=True)
class ProbeHead:
    """A probe's head and its softmax temperature (1 without validation rows); ``info`` holds the
    probe's validation accuracy when there were validation rows."""

    weight: np.ndarray
    bias: np.ndarray
    temperature: float
    info: dict[str, Any] = field(default_factory=dict)


def probe_head(
    emb: np.ndarray,
    y: np.ndarray,
    held: np.ndarray,
    *,
    n_labels: int,
    c_value: float,
    seed: int,
    refit_on_all: bool,
    say: Callable[[str], None],
) -> ProbeHead:
    """Fit the probe on the training rows and calibrate its temperature on the validation rows
    (``held``). With ``refit_on_all`` (the frozen mode) or without validation rows the head is
    then refitted on every row; fine-tuning keeps the probe of the training rows, because its
    validation rows must stay unseen."""
    temperature, clf, info = 1.0, None, {}
    if held.any():
        clf = fit_probe(emb[~held], y[~held], c_value, seed)
        temperature = fit_temperature(full_logits(clf, emb[held], n_labels), y[held])
        info["probe_val_accuracy"] = round(float((clf.predict(emb[held]) == y[held]).mean()), 4)
        say(f"linear probe: validation accuracy {info['probe_val_accuracy']:.4f}, temperature {temperature:.3f}")
    if refit_on_all or clf is None:
        clf = fit_probe(emb, y, c_value, seed)
    weight, bias = full_head(clf, n_labels, emb.shape[1])
    return ProbeHead(weight, bias, temperature, info)
