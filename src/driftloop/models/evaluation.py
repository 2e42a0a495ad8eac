"""Scoring a classifier on the shared evaluation set, and the plots logged with it."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from driftloop.core.types import EvalReport
from driftloop.data.dataset import LABEL, TEXT
from driftloop.models.base import TextClassifier


def frame_md5(frame: pd.DataFrame) -> str:
    """MD5 of the frame's text and label columns as CSV: which evaluation set a report scored."""
    payload = frame[[TEXT, LABEL]].to_csv(index=False).encode()
    return hashlib.md5(payload, usedforsecurity=False).hexdigest()


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: the row-weighted mean gap between confidence and accuracy over
    ``bins`` equal-width confidence bins."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        mask = (confidence > lo) & (confidence <= hi)
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def evaluate(model: TextClassifier, eval_set: pd.DataFrame) -> tuple[EvalReport, pd.DataFrame]:
    """Accuracy, macro-F1 over every label of the evaluation set (a label the model never saw
    scores 0 there, which is exactly the cost of not knowing it), per-intent F1 and ECE.

    Returns the report and the per-row predictions (for the confusion matrix)."""
    from sklearn.metrics import accuracy_score, f1_score

    preds = model.predict(list(eval_set[TEXT]))
    rows = pd.DataFrame(
        {
            TEXT: eval_set[TEXT].to_numpy(),
            LABEL: eval_set[LABEL].to_numpy(),
            "intent": [p.intent for p in preds],
            "confidence": [p.confidence for p in preds],
        }
    )
    labels = sorted(set(rows[LABEL]))
    per = f1_score(rows[LABEL], rows["intent"], labels=labels, average=None, zero_division=0)
    correct = (rows[LABEL] == rows["intent"]).to_numpy()
    report = EvalReport(
        accuracy=float(accuracy_score(rows[LABEL], rows["intent"])),
        macro_f1=float(np.mean(per)),
        n=len(rows),
        ece=expected_calibration_error(rows["confidence"].to_numpy(), correct),
        per_intent_f1={lab: float(f) for lab, f in zip(labels, per, strict=True)},
        eval_md5=frame_md5(eval_set),
    )
    return report, rows


def write_eval_artifacts(report: EvalReport, rows: pd.DataFrame, out_dir: Path) -> dict[str, Path]:
    """Confusion matrix and reliability plots plus per-intent scores, ready to log to MLflow."""
    import matplotlib

    matplotlib.use("Agg")  # headless; the choice is local to this call's figures
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    out_dir.mkdir(parents=True, exist_ok=True)
    labels = sorted(set(rows[LABEL]) | set(rows["intent"]))
    cm = confusion_matrix(rows[LABEL], rows["intent"], labels=labels)
    fig, ax = plt.subplots(figsize=(14, 14))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=5)
    ax.set_yticks(range(len(labels)), labels, fontsize=5)
    ax.set_xlabel("predicted intent")
    ax.set_ylabel("true intent")
    ax.set_title(f"Confusion matrix — accuracy {report.accuracy:.3f}, macro-F1 {report.macro_f1:.3f}")
    fig.tight_layout()
    cm_path = out_dir / "confusion_matrix.png"
    fig.savefig(cm_path, dpi=110)
    plt.close(fig)

    conf = rows["confidence"].to_numpy()
    correct = (rows[LABEL] == rows["intent"]).to_numpy()
    edges = np.linspace(0, 1, 11)
    centers, accs = [], []
    for lo, hi in itertools.pairwise(edges):
        mask = (conf > lo) & (conf <= hi)
        if mask.any():
            centers.append(conf[mask].mean())
            accs.append(correct[mask].mean())
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.plot(centers, accs, "o-", label=f"model (ECE {report.ece:.3f})")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.legend()
    fig.tight_layout()
    cal_path = out_dir / "calibration.png"
    fig.savefig(cal_path, dpi=110)
    plt.close(fig)

    per_path = out_dir / "per_intent_f1.csv"
    pd.Series(report.per_intent_f1, name="f1").rename_axis("intent").to_csv(per_path)
    return {"confusion_matrix": cm_path, "calibration": cal_path, "per_intent": per_path}
