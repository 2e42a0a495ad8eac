"""labels → new training set (previous + labelled production rows) → the training flow.

Also the one "retrain after a regression" (:func:`retrain_after_regression`) that both the
rollout flow's bake and the monitoring flow's promotion check open after undoing a promotion.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from driftloop.adapters import tracing, wiring
from driftloop.adapters.history import TriggerLedger
from driftloop.config.settings import Settings
from driftloop.core.overlays import flow_settings
from driftloop.core.types import ModelRef
from driftloop.data import curation, dataset
from driftloop.data.dataset import LABEL, TEXT, PreparedData
from driftloop.flows import source_version
from driftloop.flows.rollout import rollout
from driftloop.flows.training import TrainingOutcome, span_attributes, training
from driftloop.monitoring import drift
from driftloop.rollout import candidate as describe
from driftloop.tasks import data, model, monitor, retrain as retrain_steps


@dataclass(frozen=True)
class TrainingSet:
    """The retrain's training set: the champion's previous set plus the new labelled rows."""

    path: str
    previous_rows: int
    added_rows: int
    quarantined_rows: int
    merged: pd.DataFrame
    labels_until: str  # the newest label read (ISO), the candidate's data.labels_until ("" when none)


@flow(
    name="retraining",
    version=source_version(__file__),
    flow_run_name="retrain ({requested_by}): {reason}",
    log_prints=True,
)
@tracing.traced_flow("retraining", run_id=lambda: str(flow_run.id or "local"), outcome=span_attributes)
def retraining(
    reason: str,
    requested_by: str = "manual",
    window_id: str = "",
    report: str = "",
    min_new_labels: int | None = None,
    roll_out: bool = True,
    config: list[str] | None = None,
) -> TrainingOutcome:
    """Retrain on the champion's exact training set plus every labelled production row.

    ``min_new_labels`` defaults to the retrain policy; a manual run may pass 0 to retrain on what
    is there now. With ``rollout.enabled``, a candidate that passes the offline gate becomes the
    challenger and, when ``roll_out``, a rollout flow run carries it to users (a retrain opened
    by a rollback leaves it registered for the next rollout instead)."""
    settings = flow_settings(config)
    parts = wiring.build(settings)
    run_id = str(flow_run.id or "local")
    splits = data.prepare(settings.data, parts.prepared_dir)
    current = model.champion_ref(parts.registry)
    new_set = training_set(settings, parts, splits, current, min_new_labels, run_id)
    reference_set = refreshed_reference(settings, parts, splits, current, new_set.merged, run_id)
    create_markdown_artifact(
        retrain_steps.request_markdown(
            requested_by=requested_by,
            reason=reason,
            window_id=window_id,
            drift_report=report,
            previous_rows=new_set.previous_rows,
            added_rows=new_set.added_rows,
            quarantined_rows=new_set.quarantined_rows,
            reference_set=reference_set,
        ),
        key="retrain-request",
        description=reason,
    )
    outcome = training(
        training_set=new_set.path,
        reason=reason,
        trigger=requested_by,
        report=report,
        reference_set=reference_set,
        config=config,
        labels_until=new_set.labels_until,
    )
    retrain_steps.publish_retrain(
        parts.registry,
        outcome.candidate,
        outcome.report,
        outcome.decision,
        outcome.champion,
        reason=reason,
        requested_by=requested_by,
        window_id=window_id,
        drift_report=report,
        mlflow_ui=settings.registry.ui_url,
    )
    if settings.rollout.enabled and roll_out and outcome.decision.promote and outcome.champion != outcome.candidate:
        outcome = roll_out_candidate(outcome, requested_by=requested_by, reason=reason, config=config)
    return outcome


def training_set(
    settings: Settings,
    parts: wiring.Components,
    splits: PreparedData,
    current: ModelRef | None,
    min_new_labels: int | None,
    run_id: str,
) -> TrainingSet:
    """The champion's own training set, restored by its DVC hash (retraining never guesses),
    plus the labelled production rows once enough have arrived; written for the training flow."""
    eval_texts = list(splits.read("eval")[TEXT])
    label_set = list(dataset.read_labels(splits["labels"]))
    champion_tags = model.version_tags(parts.registry, current) if current else {}
    if current is not None:
        dataset.require_same_data(splits, champion_tags, str(current))
    md5 = champion_tags.get("data.md5")
    if md5:
        path = data.restore_dataset(parts.datasets, md5, parts.retrain_dir / f"previous-{md5}.csv")
        previous = dataset.read_labelled(path, TEXT, LABEL)
        get_run_logger().info("previous training set: %s's, %d rows (md5 %s)", current, len(previous), md5)
    else:
        previous = splits.read("train")
    needed = settings.retrain.min_new_labels if min_new_labels is None else min_new_labels
    # The labels before the champion's cut-off are in the set just restored: read only the later ones.
    cut_off = labels_cut_off(champion_tags, current) if md5 else None
    labelled, newest = data.wait_for_labels(
        parts.log_root,
        previous,
        eval_texts,
        label_set,
        needed,
        settings.retrain,
        since=cut_off,
        max_lag=timedelta(days=settings.logs.label_max_lag_days),
    )
    merged = curation.merge_training_set(previous, labelled.rows, eval_texts)
    out = parts.retrain_dir / f"training-{run_id}.csv"
    dataset.write_labelled(merged, out)
    return TrainingSet(
        str(out),
        len(previous),
        len(merged) - len(previous),
        len(labelled.quarantined),
        merged,
        newest.isoformat() if newest is not None else "",
    )


def labels_cut_off(champion_tags: dict[str, str], champion: ModelRef | None) -> datetime | None:
    """The champion's ``data.labels_until``: the labels before it are in its training set. A tag
    that is not an ISO time (edited by hand) is ignored with a warning: every label the log holds
    is read instead, which costs more but loses none."""
    raw = champion_tags.get(describe.LABELS_UNTIL_TAG)
    if not raw:
        return None
    try:
        return datetime.fromisoformat(raw)
    except ValueError:
        get_run_logger().warning(
            "%s: tag %s=%r is not an ISO time; reading every label", champion, describe.LABELS_UNTIL_TAG, raw
        )
        return None


def refreshed_reference(
    settings: Settings,
    parts: wiring.Components,
    splits: PreparedData,
    current: ModelRef | None,
    merged: pd.DataFrame,
    run_id: str,
) -> str | None:
    """A monitoring reference of recent unlabelled production texts (``retrain.refresh_reference``);
    None keeps the champion's."""
    if not (settings.retrain.refresh_reference and current is not None):
        return None
    eval_texts = list(splits.read("eval")[TEXT])
    recent = monitor.load_window(parts.log_root, current.version, settings.retrain.reference_size)
    reference = curation.production_reference(recent, merged[TEXT], eval_texts)
    needed = drift.min_reference_size(settings.monitor)
    if len(reference) >= needed:
        return str(dataset.write_labelled(reference, parts.retrain_dir / f"reference-{run_id}.csv"))
    get_run_logger().warning(
        "only %d unlabelled production texts to refresh the reference (need %d); "
        "the new model keeps the previous reference",
        len(reference),
        needed,
    )
    return None


def roll_out_candidate(
    outcome: TrainingOutcome, *, requested_by: str, reason: str, config: list[str] | None
) -> TrainingOutcome:
    """Carry the new challenger to users with the rollout flow (a regression after its promotion
    opens :func:`retrain_after_regression`)."""
    done = rollout(
        challenger=outcome.candidate.version,
        requested_by=requested_by,
        reason=reason,
        config=config,
        on_regression=retrain_after_regression,
    )
    get_run_logger().info("rollout of %s: %s (%s)", outcome.candidate, done.result, done.reason)
    return replace(outcome, champion=done.champion, rollout=done)


def retrain_after_regression(
    regressed: ModelRef,
    because: str,
    *,
    requested_by: str,
    window_id: str,
    evidence: str,
    ledger: TriggerLedger,
    config: list[str] | None,
) -> TrainingOutcome | None:
    """Open a retrain run for a promotion that regressed and was undone: ``window_id`` is
    recorded first (so it fires once), the run retrains on what is labelled now and leaves its
    candidate registered instead of rolling it out. Returns the retrain's outcome, or None when
    the window was already recorded (another watcher opened its retrain) or the run failed (it
    shows as failed in the UI; the rolled-back champion stays)."""
    if not ledger.record(window_id, because, run=str(flow_run.id or "local")):
        get_run_logger().info("window %s already opened a retrain: not opening another", window_id)
        return None
    state = retraining(
        reason=f"{regressed} regressed after promotion: {because}",
        requested_by=requested_by,
        window_id=window_id,
        report=evidence,
        min_new_labels=0,
        roll_out=False,
        config=config,
        return_state=True,
    )
    if state.is_completed():
        return state.result()
    get_run_logger().error("the retrain run opened after the regression ended %s", state.type.value)
    return None
