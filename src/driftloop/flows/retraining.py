"""labels → new training set (previous + labelled production rows) → the training flow."""

from __future__ import annotations

from dataclasses import replace

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from driftloop.adapters import tracing, wiring
from driftloop.config.settings import load_settings
from driftloop.data import curation, dataset
from driftloop.data.dataset import LABEL, TEXT
from driftloop.flows import source_version
from driftloop.flows.training import TrainingOutcome, span_attributes, training
from driftloop.monitoring import drift
from driftloop.tasks import data, model, monitor, retrain as retrain_steps


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
    settings = load_settings(config)
    parts = wiring.build(settings)
    logger = get_run_logger()
    run_id = str(flow_run.id or "local")
    splits = data.prepare(settings.data, parts.prepared_dir)
    eval_texts = list(splits.read("eval")[TEXT])
    label_set = list(dataset.read_labels(splits["labels"]))

    # The previous set is the champion's own, restored by its DVC hash: retraining never guesses.
    current = model.champion_ref(parts.registry)
    champion_tags = model.version_tags(parts.registry, current) if current else {}
    if current is not None:
        dataset.require_same_data(splits, champion_tags, str(current))
    md5 = champion_tags.get("data.md5")
    if md5:
        path = data.restore_dataset(parts.datasets, md5, parts.retrain_dir / f"previous-{md5}.csv")
        previous = dataset.read_labelled(path, TEXT, LABEL)
        logger.info("previous training set: %s's, %d rows (md5 %s)", current, len(previous), md5)
    else:
        previous = splits.read("train")
    needed = settings.retrain.min_new_labels if min_new_labels is None else min_new_labels
    labelled = data.wait_for_labels(parts.log_root, previous, eval_texts, label_set, needed, settings.retrain)
    merged = curation.merge_training_set(previous, labelled.rows, eval_texts)
    out = parts.retrain_dir / f"training-{run_id}.csv"
    dataset.write_labelled(merged, out)
    reference_set = None
    if settings.retrain.refresh_reference and current is not None:
        recent = monitor.load_window(parts.log_root, current.version, settings.retrain.reference_size)
        reference = curation.production_reference(recent, merged[TEXT], eval_texts)
        needed = drift.min_reference_size(settings.monitor)
        if len(reference) >= needed:
            reference_set = str(dataset.write_labelled(reference, parts.retrain_dir / f"reference-{run_id}.csv"))
        else:
            logger.warning(
                "only %d unlabelled production texts to refresh the reference (need %d); "
                "the new model keeps the previous reference",
                len(reference),
                needed,
            )
    added = len(merged) - len(previous)
    create_markdown_artifact(
        f"## Retrain requested by {requested_by}\n\n- reason: {reason}\n- window: `{window_id or '-'}`\n"
        f"- drift report: {report or '-'}\n- previous training set: {len(previous)} rows\n"
        f"- new labelled production rows: {added} (quarantined: {len(labelled.quarantined)})\n"
        f"- monitoring reference: {'refreshed from ' + reference_set if reference_set else 'unchanged'}\n",
        key="retrain-request",
        description=reason,
    )
    outcome = training(
        training_set=str(out),
        reason=reason,
        trigger=requested_by,
        report=report,
        reference_set=reference_set,
        config=config,
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
        from driftloop.flows.rollout import rollout

        done = rollout(challenger=outcome.candidate.version, requested_by=requested_by, reason=reason, config=config)
        logger.info("rollout of %s: %s (%s)", outcome.candidate, done.result, done.reason)
        outcome = replace(outcome, champion=done.champion, rollout=done)
    return outcome
