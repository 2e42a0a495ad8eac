"""The drift monitor on BANKING77: quiet windows stay quiet, windows with unseen intents trigger.

One TF-IDF model is trained per module (~10 s) and one calibration is shared; each detection
takes ~0.2 s. Windows follow the demo's traffic: ``live_known`` for quiet traffic, 35% of
``live_new`` (the withheld intents) for drift.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from driftloop.config.settings import MonitorSettings, load_settings
from driftloop.data.dataset import build_splits
from driftloop.models.families import get_family
from driftloop.monitoring import drift
from tests.support import ROOT

WINDOW = 400
NEW_SHARE = 0.35
SEEDS = range(5)


@dataclass(frozen=True)
class Traffic:
    reference: pd.DataFrame
    live_known: pd.DataFrame
    live_new: pd.DataFrame
    cfg: MonitorSettings


def _predicted(model, frame: pd.DataFrame) -> pd.DataFrame:
    predictions = model.predict(list(frame["text"]))
    out = frame[["text", "label"]].reset_index(drop=True)
    out["intent"] = [p.intent for p in predictions]
    out["confidence"] = [p.confidence for p in predictions]
    return out


@pytest.fixture(scope="module")
def traffic() -> Traffic:
    settings = load_settings(config_dir=ROOT / "configs")
    # base.yaml's data paths are relative to the repository root, not to pytest's directory.
    data = settings.data.model_copy(
        update={"train_path": ROOT / settings.data.train_path, "test_path": ROOT / settings.data.test_path}
    )
    splits = build_splits(data)
    model = get_family(settings.model.family).fit(splits.train, settings.model.params)
    reference = _predicted(model, splits.reference).drop(columns="label")
    return Traffic(
        reference, _predicted(model, splits.live_known), _predicted(model, splits.live_new), settings.monitor
    )


@pytest.fixture(scope="module")
def calibration(traffic: Traffic) -> drift.Calibration:
    return drift.calibrate(traffic.reference, WINDOW, traffic.cfg)


def quiet_window(traffic: Traffic, seed: int) -> pd.DataFrame:
    return traffic.live_known.sample(WINDOW, replace=False, random_state=seed).reset_index(drop=True)


def drifted_window(traffic: Traffic, seed: int) -> pd.DataFrame:
    n_new = round(WINDOW * NEW_SHARE)
    parts = [
        traffic.live_new.sample(n_new, random_state=seed),
        traffic.live_known.sample(WINDOW - n_new, random_state=seed),
    ]
    return pd.concat(parts).sample(frac=1, random_state=seed).reset_index(drop=True)


def _describe(result) -> str:
    return "; ".join(f"{s.name}={s.value:.3f} (>{s.threshold:.3f}: {s.drifted})" for s in result.signals)


@pytest.mark.parametrize("seed", SEEDS)
def test_quiet_window_does_not_trigger(traffic, calibration, seed):
    result = drift.detect_drift(traffic.reference, quiet_window(traffic, seed), traffic.cfg, calibration)
    print(f"quiet seed {seed}: {_describe(result)}")
    assert not result.drift_detected, _describe(result)
    assert result.n_current == WINDOW


@pytest.mark.parametrize("seed", SEEDS)
def test_window_with_unseen_intents_triggers(traffic, calibration, seed):
    result = drift.detect_drift(traffic.reference, drifted_window(traffic, seed), traffic.cfg, calibration)
    print(f"drifted seed {seed}: {_describe(result)}")
    assert result.drift_detected, _describe(result)
    assert result.share_drifted == pytest.approx(sum(s.drifted for s in result.signals) / 3)
    # Unseen intents are answered with known ones, wrongly: the live accuracy shows it.
    assert result.accuracy is not None and result.accuracy < 0.75
    assert result.n_labelled == WINDOW


def test_window_repeating_known_texts_does_not_trigger(traffic, calibration):
    # Every known-intent text sent twice (the copies with other case and spacing). Without
    # de-duplication the domain classifier memorises the repeats and its AUC reaches 0.59-0.62,
    # over the threshold; de-duplicated it is 0.46-0.48.
    texts = traffic.live_known.sample(300, random_state=3)
    copies = texts.assign(text=texts["text"].str.upper().str.replace(" ", "  "))
    window = pd.concat([texts, copies]).sample(frac=1, random_state=3).reset_index(drop=True)
    result = drift.detect_drift(traffic.reference, window, traffic.cfg, calibration)
    print(f"known texts twice: {_describe(result)}")
    assert result.n_current == 300
    assert not result.signal(drift.TEXT_DRIFT).drifted, _describe(result)
    assert not result.drift_detected, _describe(result)


def test_window_resampled_from_the_reference_does_not_trigger(traffic, calibration):
    window = traffic.reference.sample(WINDOW, replace=True, random_state=3).reset_index(drop=True)
    distinct = window["text"].nunique()
    assert distinct < WINDOW - 50
    result = drift.detect_drift(traffic.reference, window, traffic.cfg, calibration)
    print(f"reference resampled: {_describe(result)}")
    assert result.n_current == distinct
    assert not result.drift_detected, _describe(result)


def test_calibration_is_deterministic_and_respects_the_floor(traffic, calibration):
    again = drift.calibrate(traffic.reference, WINDOW, traffic.cfg)
    assert again == calibration
    cfg = traffic.cfg
    assert {s.name for s in calibration.signals} == set(drift.SIGNALS)
    for signal in calibration.signals:
        assert len(signal.seen) == cfg.calibration_rounds
        assert signal.threshold >= max(signal.seen) + cfg.margin - 1e-12
    assert calibration.threshold(drift.TEXT_DRIFT) >= cfg.text_auc_floor
    # Halves of the reference (268 texts a side) are smaller than the real comparison (all of it
    # against 400), so their text AUCs are pulled towards 0.5 before the worst is taken.
    text = next(s for s in calibration.signals if s.name == drift.TEXT_DRIFT)
    assert 0.5 < text.scale < 1
    print("calibration:", {s.name: round(s.threshold, 3) for s in calibration.signals})


def test_calibration_depends_on_the_seed(traffic, calibration):
    other = drift.calibrate(traffic.reference, WINDOW, traffic.cfg.model_copy(update={"seed": 8}))
    assert [s.seen for s in other.signals] != [s.seen for s in calibration.signals]


def test_calibration_round_trips_through_json(calibration):
    restored = drift.Calibration.from_json(calibration.to_json())
    assert restored == calibration


def test_calibration_of_another_reference_is_refused(traffic, calibration):
    other = traffic.reference.iloc[10:].reset_index(drop=True)
    with pytest.raises(ValueError, match="calibration is for reference"):
        drift.detect_drift(other, quiet_window(traffic, 0), traffic.cfg, calibration)


def test_window_below_min_window_is_refused(traffic, calibration):
    small = quiet_window(traffic, 0).head(traffic.cfg.min_window - 1)
    with pytest.raises(drift.WindowTooSmall):
        drift.detect_drift(traffic.reference, small, traffic.cfg, calibration)


def test_window_id_is_order_independent_and_distinct():
    ids = [f"req-{i}" for i in range(50)]
    shuffled = list(np.random.default_rng(0).permutation(ids))
    assert drift.window_id_for(ids) == drift.window_id_for(shuffled)
    assert drift.window_id_for(ids) != drift.window_id_for(ids[:-1])
    assert drift.window_id_for(ids) != drift.window_id_for([*ids[:-1], "req-x"])
    # No separator trick: ["a,b"] is not ["a", "b"].
    assert drift.window_id_for(["a,b"]) != drift.window_id_for(["a", "b"])


def test_result_carries_window_metadata_and_live_accuracy(traffic, calibration):
    window = quiet_window(traffic, 1)
    start = datetime(2024, 5, 1, 12, 0)
    window["request_id"] = [f"r{i}" for i in range(len(window))]
    window["time"] = [start + timedelta(seconds=i) for i in range(len(window))]
    # Feedback arrives for some requests only.
    window.loc[window.index % 4 == 0, "label"] = None
    labelled = window[window["label"].notna()]
    result = drift.detect_drift(traffic.reference, window, traffic.cfg, calibration)
    assert result.window_id == drift.window_id_for(window["request_id"])
    assert result.window_start == start
    assert result.window_end == start + timedelta(seconds=len(window) - 1)
    assert result.n_labelled == len(labelled)
    assert result.accuracy == pytest.approx((labelled["intent"] == labelled["label"]).mean())
    assert result.n_reference == len(traffic.reference)
    named = drift.detect_drift(traffic.reference, window, traffic.cfg, calibration, window_id="w-1")
    assert named.window_id == "w-1"


def test_html_report_is_written_and_calibration_is_computed_when_missing(traffic, tmp_path):
    path = tmp_path / "reports" / "window.html"
    result = drift.detect_drift(traffic.reference, drifted_window(traffic, 0), traffic.cfg, report_path=path)
    assert result.report_path == str(path)
    html = path.read_text()
    assert len(html) > 10_000
    assert "text_length" in html and "word_count" in html
    assert result.drift_detected, _describe(result)


def test_no_report_unless_asked(traffic, calibration, tmp_path):
    result = drift.detect_drift(traffic.reference, quiet_window(traffic, 2), traffic.cfg, calibration)
    assert result.report_path == ""


def test_importing_the_module_does_not_import_evidently():
    # Importing Evidently takes ~9 s; flows import driftloop.monitoring.drift long before a monitor run.
    code = "import sys, driftloop.monitoring.drift; print('evidently' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_only_the_drift_module_imports_evidently():
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "src" / "driftloop").rglob("*.py")
        if path.name != "drift.py"
        and any(
            line.strip().startswith(("import evidently", "from evidently")) for line in path.read_text().splitlines()
        )
    ]
    assert offenders == []


def test_a_sampled_reference_widens_the_prediction_thresholds(traffic, calibration):
    """A reference that is itself a random production sample has sampling noise of its own."""
    sampled = drift.calibrate(traffic.reference, WINDOW, traffic.cfg, reference_is_sample=True)
    assert sampled.threshold(drift.INTENT_DRIFT) > calibration.threshold(drift.INTENT_DRIFT)
    assert sampled.threshold(drift.TEXT_DRIFT) == calibration.threshold(drift.TEXT_DRIFT)
