"""validate → select (with a search grid) → train → evaluate → register → promote."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.runtime import flow_run

from driftloop.adapters import tracing, wiring
from driftloop.adapters.provenance import git_commit
from driftloop.adapters.registry import CHALLENGER, CHAMPION
from driftloop.config.settings import load_settings
from driftloop.core.policy import decide_promotion
from driftloop.core.types import EvalReport, ModelRef, PromotionDecision
from driftloop.data import dataset
from driftloop.data.dataset import LABEL, TEXT
from driftloop.flows import source_version
from driftloop.flows.selection import select_model
from driftloop.models.selection import SelectionResult
from driftloop.tasks import data, model


@dataclass(frozen=True)
class TrainingOutcome:
    candidate: ModelRef
    report: EvalReport
    champion_report: EvalReport | None
    decision: PromotionDecision
    data_md5: str
    champion: ModelRef | None
    rollout: Any = None  # the rollout flow's outcome, when one carried the candidate
    selection: SelectionResult | None = None  # how the settings were chosen, with a search grid


def span_attributes(out: TrainingOutcome) -> dict[str, Any]:
    """What the training run's span records about its result."""
    return {
        "driftloop.model_version": out.candidate.version,
        "driftloop.promote": out.decision.promote,
        "driftloop.champion_version": out.champion.version if out.champion else None,
        "driftloop.rollout_result": getattr(out.rollout, "result", None),
        **{f"driftloop.eval.{k}": v for k, v in out.report.metrics().items() if v is not None},
    }


@flow(name="training", version=source_version(__file__), flow_run_name="train ({trigger}): {reason}", log_prints=True)
@tracing.traced_flow("training", run_id=lambda: str(flow_run.id or "local"), outcome=span_attributes)
def training(
    training_set: str | None = None,
    reason: str = "initial training",
    trigger: str = "manual",
    report: str = "",
    reference_set: str | None = None,
    config: list[str] | None = None,
) -> TrainingOutcome:
    """Train a candidate on ``training_set`` (a CSV/JSON with text and label columns; default: the
    prepared first training set) and promote it if it beats the champion on the shared eval set.
    ``report`` is the evidence that asked for this run (a drift report), kept in the history.
    ``reference_set`` (texts) becomes this model's monitoring reference; without it the model
    inherits the champion's."""
    settings = load_settings(config)
    parts = wiring.build(settings)
    logger = get_run_logger()
    run_id = str(flow_run.id or "local")

    splits = data.prepare(settings.data, parts.prepared_dir)
    source = Path(training_set) if training_set else splits["train"]
    frame = dataset.read_labelled(source, TEXT, LABEL)
    eval_set = splits.read("eval")
    label_set = dataset.read_labels(splits["labels"])

    data.validate_training_set(frame, source=str(source), known_labels=label_set, eval_texts=list(eval_set[TEXT]))
    version = data.commit_dataset(parts.datasets, frame, "training")
    chosen = select_model(str(source), settings.model, settings.selection, seed=settings.data.seed)
    model_cfg = chosen.model if chosen else settings.model
    fitted_rows = len(frame)
    if chosen is not None and not chosen.refit:
        # selection.refit false: the winner as trained for its holdout, not fitted a second time.
        candidate_model, fitted_rows = chosen.chosen.model, chosen.chosen.train_rows
        logger.info(
            "registering %s as selected (selection.refit: false): fitted on %d of %d rows",
            chosen.chosen.candidate.name,
            fitted_rows,
            len(frame),
        )
    else:
        # A long fit (the transformer family fine-tuning) resumes from its checkpoint when a
        # crashed run is retried on the same training set and settings.
        candidate_model = model.train(
            frame, model_cfg, seed=settings.data.seed, checkpoint_root=settings.checkpoints_dir
        )
    scores, rows = model.evaluate(candidate_model, eval_set)

    current = model.champion_ref(parts.registry)
    champion_tags = model.version_tags(parts.registry, current) if current is not None else {}
    if champion_tags.get("data.key", splits.key) != splits.key:
        logger.warning(
            "the champion %s was trained on data set %r (key %s); this candidate on %r (key %s): "
            "both are evaluated on the latter's evaluation set",
            current,
            champion_tags.get("data.name"),
            champion_tags["data.key"],
            splits.name,
            splits.key,
        )
    reference_tags: dict[str, str] = {}
    if reference_set:
        ref_version = data.commit_dataset(
            parts.datasets, dataset.read_labelled(reference_set, TEXT, LABEL), "reference"
        )
        reference_tags = {"reference.md5": ref_version.md5, "reference.rows": str(ref_version.rows)}
    elif current is not None:
        reference_tags = {k: v for k, v in champion_tags.items() if k.startswith("reference.")}
    champion_report = None
    if current is not None:
        champion_report, _ = model.evaluate(model.load_model(parts.registry, current), eval_set)
    decision = decide_promotion(scores, champion_report, settings.promotion)
    logger.info("promotion decision: %s (%s)", "promote" if decision.promote else "keep champion", decision.reason)

    eval_dir = parts.reports_dir / f"eval-{run_id}"
    model.write_eval_artifacts(scores, rows, eval_dir)
    tags = {
        **splits.lineage(),  # which data set, the key of its prepared splits, the raw files' hashes
        "data.md5": version.md5,
        "data.rows": str(version.rows),
        "data.labels": str(frame[LABEL].nunique()),
        "training.rows": str(fitted_rows),  # fewer than data.rows with selection.refit false
        "eval.md5": scores.eval_md5,
        "git.commit": git_commit(),
        "config.hash": settings.config_hash(),
        "prefect.flow_run_id": run_id,
        "trigger": trigger,
        "reason": reason[:500],
        "model.family": model_cfg.family,
        "driftloop.kind": "train",
        "report": report[:500],
        "decision": "promote" if decision.promote else "reject",
        "decision.reason": decision.reason[:500],
        **reference_tags,
        **(chosen.tags() if chosen else {}),
        # How a long fit went (transformer: steps, early stop, best validation accuracy, resumed from).
        **{f"training.{k}": str(v)[:500] for k, v in getattr(candidate_model, "info", {}).items() if k != "history"},
    }
    metrics = scores.metrics() | (
        {f"champion.{k}": v for k, v in champion_report.metrics().items()} if champion_report else {}
    )
    ref = model.register_model(
        parts.registry,
        candidate_model,
        tags=tags,
        metrics=metrics,
        params={"family": model_cfg.family, **model_cfg.params, "train_rows": fitted_rows},
        run_name=f"train-{trigger}",
        input_example=list(eval_set[TEXT].head(3)),
        artifacts={"evaluation": eval_dir},
    )
    model.move_alias(
        parts.registry,
        parts.history,
        CHALLENGER,
        ref,
        action="register",
        reason=f"{reason}; {decision.reason}",
        actor=f"prefect:{run_id}",
        report=report,
    )
    # With a rollout policy, a candidate that passed the offline gate reaches users only through
    # the rollout flow (the first model has nothing to be compared with and is promoted at once).
    staged = settings.rollout.enabled and current is not None
    if decision.promote and staged:
        logger.info("%s is the challenger; the rollout flow decides on live traffic", ref)
    if decision.promote and not staged:
        model.move_alias(
            parts.registry,
            parts.history,
            CHAMPION,
            ref,
            action="promote",
            reason=f"{reason}; {decision.reason}",
            actor=f"prefect:{run_id}",
            report=report,
        )
        model.clear_alias(
            parts.registry, parts.history, CHALLENGER, reason=f"{ref} became champion", actor=f"prefect:{run_id}"
        )

    create_table_artifact(
        [{"model": "candidate " + str(ref), **{k: round(v, 4) for k, v in scores.metrics().items()}}]
        + (
            [{"model": "champion " + str(current), **{k: round(v, 4) for k, v in champion_report.metrics().items()}}]
            if champion_report
            else []
        ),
        key="candidate-vs-champion",
        description="shared evaluation set",
    )
    create_markdown_artifact(
        f"## {('Challenger, to be rolled out' if staged else 'Promoted') if decision.promote else 'Not promoted'}: "
        f"{ref}\n\n{decision.reason}\n\n"
        f"- reason: {reason}\n- training set: {version.rows} rows, DVC md5 `{version.md5}`\n"
        f"- evaluation set md5 `{scores.eval_md5}` ({scores.n} rows)\n"
        f"- restore the training set: `driftloop data restore --version {ref.version}`\n",
        key="promotion",
        description=decision.reason,
    )
    create_link_artifact(
        parts.registry.version_url(ref, settings.registry.ui_url),
        link_text=f"{ref} in the MLflow registry",
        key="model-version",
    )
    return TrainingOutcome(
        ref,
        scores,
        champion_report,
        decision,
        version.md5,
        ref if decision.promote and not staged else current,
        selection=chosen,
    )
