"""Tiny real data and what serving leaves behind: a few rows per label train a real model in well
under a second; ``serve_window`` writes the prediction log (and labels) as the serving app would."""

from __future__ import annotations

import pandas as pd

from driftloop.adapters import predlog

TINY_PARAMS = {"char_min_df": 1}


def tiny_frame(train: pd.DataFrame, labels: list[str], per_label: int = 8) -> pd.DataFrame:
    """``per_label`` rows of each label: a real model in well under a second."""
    parts = [train[train["label"] == label].head(per_label) for label in labels]
    return pd.concat(parts, ignore_index=True)


def serve_window(parts, frame: pd.DataFrame, tag: str, label_share: float = 0.0) -> list[str]:
    """What the serving app does for each request: predict with the champion, log, collect labels."""
    ref = parts.registry.champion()
    model = parts.registry.load(ref)
    ids = [f"{tag}-{i}" for i in range(len(frame))]
    texts = frame["text"].tolist()
    with predlog.PredictionLog(parts.log_root) as log:
        log.write_batch(ids, texts, model.predict(texts), ref.version, 1.0, [len(t.split()) for t in texts])
    if label_share:
        n = int(len(frame) * label_share)
        with predlog.FeedbackLog(parts.log_root) as fb:
            for rid, label in zip(ids[:n], frame["label"].tolist()[:n], strict=True):
                fb.write(rid, label)
    return ids
