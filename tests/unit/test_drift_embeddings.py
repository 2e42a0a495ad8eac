"""Embedding drift, the fourth signal for a champion with ``embed``: calibrated like text drift,
quiet on known traffic, firing on texts about other things, and in the HTML report.

The embedder is a stand-in with the transformer's shape (hashed words, L2-normalised), so the test
exercises Evidently's embedding drift without a model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from driftloop.config.settings import MonitorSettings
from driftloop.monitoring import drift

CFG = MonitorSettings(window_size=150, min_window=100, calibration_rounds=3, min_signals=2)


def embed(texts) -> np.ndarray:
    from sklearn.feature_extraction.text import HashingVectorizer

    x = HashingVectorizer(n_features=64, alternate_sign=False, norm="l2").transform(list(texts))
    return x.toarray().astype(np.float32)


def _frame(rows: pd.DataFrame, confidence: float) -> pd.DataFrame:
    return pd.DataFrame({"text": rows["text"].to_numpy(), "intent": rows["label"].to_numpy(), "confidence": confidence})


@pytest.fixture(scope="module")
def frames(banking_train):
    labels = sorted(banking_train["label"].unique())
    known = banking_train[banking_train["label"].isin(labels[:20])].sample(frac=1, random_state=0)
    other = banking_train[banking_train["label"].isin(labels[40:60])].sample(150, random_state=0)
    reference = _frame(known.iloc[:400], 0.9)
    quiet = _frame(known.iloc[400:550], 0.9)
    drifted = _frame(other, 0.9)
    return reference, quiet, drifted


@pytest.fixture(scope="module")
def calibration(frames):
    reference, _, _ = frames
    return drift.calibrate(reference, 150, CFG, embed=embed)


def test_calibration_adds_the_embedding_signal_and_survives_json(calibration):
    assert calibration.has(drift.EMBEDDING_DRIFT)
    assert calibration.threshold(drift.EMBEDDING_DRIFT) >= CFG.text_auc_floor
    again = drift.Calibration.from_json(calibration.to_json())
    assert again.threshold(drift.EMBEDDING_DRIFT) == calibration.threshold(drift.EMBEDDING_DRIFT)


def test_known_traffic_is_quiet_and_other_topics_drift(frames, calibration, tmp_path):
    reference, quiet, drifted = frames
    calm = drift.detect_drift(reference, quiet, CFG, calibration, embed=embed)
    signal = calm.signal(drift.EMBEDDING_DRIFT)
    assert signal is not None and not signal.drifted and len(calm.signals) == 4
    report = tmp_path / "drift.html"
    moved = drift.detect_drift(reference, drifted, CFG, calibration, report_path=report, embed=embed)
    signal = moved.signal(drift.EMBEDDING_DRIFT)
    assert signal.drifted and signal.value > signal.threshold + 0.05
    assert "embeddings" in report.read_text().lower()


def test_embeddings_need_a_calibration_that_has_them(frames):
    reference, quiet, _ = frames
    plain = drift.calibrate(reference, 150, CFG.model_copy(update={"calibration_rounds": 1}))
    assert not plain.has(drift.EMBEDDING_DRIFT)
    assert len(drift.detect_drift(reference, quiet, CFG, plain).signals) == 3
    with pytest.raises(ValueError, match="embedding_drift"):
        drift.detect_drift(reference, quiet, CFG, plain, embed=embed)
