"""What data the loop looks at: monitoring windows, labelled production rows, retraining sets.

Pure functions over frames; reading the logs and writing versions are the adapters' job.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from driftloop.data.dataset import LABEL, TEXT, normalise


def select_window(predictions: pd.DataFrame, model_version: str | None, size: int) -> pd.DataFrame:
    """The newest ``size`` distinct texts the given model answered.

    Only the serving champion's answers count, so the predicted-intent distribution is compared
    with that same model's reference. Repeated texts count once (a retry storm or a popular FAQ
    is not drift), keeping the newest answer.
    """
    if predictions.empty:
        return predictions
    frame = predictions
    if model_version is not None and "model_version" in frame.columns:
        frame = frame[frame["model_version"].astype(str) == str(model_version)]
    frame = frame.sort_values("time", kind="stable")
    frame = frame.loc[~normalise(frame[TEXT]).duplicated(keep="last")]
    return frame.tail(size).reset_index(drop=True)


@dataclass(frozen=True)
class LabelledRows:
    rows: pd.DataFrame  # text, label: usable for training
    quarantined: pd.DataFrame  # feedback whose label is not in the label set (kept, not used)


def labelled_rows(predictions: pd.DataFrame, feedback: pd.DataFrame, label_set: Iterable[str]) -> LabelledRows:
    """Production texts with the labels annotators gave them (last label wins per request)."""
    empty = pd.DataFrame({TEXT: pd.Series(dtype=str), LABEL: pd.Series(dtype=str)})
    if predictions.empty or feedback.empty:
        return LabelledRows(empty, empty.assign(request_id=pd.Series(dtype=str)))
    last = feedback.sort_values("time", kind="stable").drop_duplicates("request_id", keep="last")
    joined = last[["request_id", "label"]].merge(
        predictions[["request_id", TEXT]].drop_duplicates("request_id"), on="request_id", how="inner"
    )
    known = joined[LABEL].isin(set(label_set))
    rows = joined[known][[TEXT, LABEL]]
    rows = rows.loc[~normalise(rows[TEXT]).duplicated(keep="last")].reset_index(drop=True)
    return LabelledRows(rows, joined[~known].reset_index(drop=True))


def new_rows(previous: pd.DataFrame, labelled: pd.DataFrame, eval_texts: Iterable[str]) -> pd.DataFrame:
    """Labelled rows that would add something: not already in the training set, not in eval."""
    seen = set(normalise(previous[TEXT])) | set(normalise(pd.Series(list(eval_texts), dtype=str)))
    return labelled.loc[~normalise(labelled[TEXT]).isin(seen)].reset_index(drop=True)


def merge_training_set(previous: pd.DataFrame, labelled: pd.DataFrame, eval_texts: Iterable[str]) -> pd.DataFrame:
    """Previous training set plus the new labelled rows, no duplicates, nothing from eval."""
    added = new_rows(previous, labelled, eval_texts)
    return pd.concat([previous[[TEXT, LABEL]], added[[TEXT, LABEL]]], ignore_index=True)


def production_reference(
    window: pd.DataFrame, training_texts: Iterable[str], eval_texts: Iterable[str]
) -> pd.DataFrame:
    """The monitoring reference after a retrain: recent production texts the new model never
    trained on (nor is scored on). Labelled rows went into training, so these are the window's
    unlabelled texts; they carry today's mix of intents, which is what "no drift" now means."""
    seen = set(normalise(pd.Series(list(training_texts), dtype=str))) | set(
        normalise(pd.Series(list(eval_texts), dtype=str))
    )
    if window.empty:
        return pd.DataFrame({TEXT: pd.Series(dtype=str), LABEL: pd.Series(dtype=str)})
    fresh = window.loc[~normalise(window[TEXT]).isin(seen), [TEXT]]
    fresh = fresh.loc[~normalise(fresh[TEXT]).duplicated()]
    return fresh.assign(**{LABEL: ""}).reset_index(drop=True)
