"""validate → select (with a search grid) → train → evaluate → register → promote."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from driftloop.adapters import tracing, wiring
from driftloop.adapters.provenance import git_commit
from driftloop.adapters.registry import CHALLENGER, CHAMPION
from driftloop.config.settings import ModelSettings, Settings
from driftloop.core.overlays import flow_settings
from driftloop.core.policy import decide_promotion
from driftloop.core.types import DataVersion, EvalReport, ModelRef, PromotionDecision
from driftloop.data import dataset
from driftloop.data.dataset import LABEL, TEXT, PreparedData
from driftloop.flows import source_version
from driftloop.flows.selection import select_model
from driftloop.models.families import TextClassifier
from driftloop.models.selection import SelectionResult
from driftloop.rollout import candidate as describe
from driftloop.tasks import data, model


@dataclass(frozen=True)
class TrainingOutcome:
    """What a training run produced: the registered candidate, its scores against the
    champion's, the offline decision, and who is champion afterwards."""

    candidate: ModelRef
    report: EvalReport
    champion_report: EvalReport | None
    decision: PromotionDecision
    data_md5: str
    champion: ModelRef | None
    rollout: Any = None  # the rollout flow's outcome, when one carried the candidate
    selection: SelectionResult | None = None  # how the settings were chosen, with a search grid


@dataclass(frozen=True)
class TrainingData:
    """The validated, DVC-versioned training set and the shared evaluation set."""

    splits: PreparedData
    source: Path
    frame: pd.DataFrame
    eval_set: pd.DataFrame
    version: DataVersion


@dataclass(frozen=True)
class Fitted:
    """The candidate model, the settings it was trained with and on how many rows."""

    model: TextClassifier
    settings: ModelSettings
    rows: int
    selection: SelectionResult | None


@dataclass(frozen=True)
class Incumbent:
    """The champion the candidate is compared with (all None / empty without one)."""

    ref: ModelRef | None
    tags: dict[str, str]
    report: EvalReport | None


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
    labels_until: str = "",
) -> TrainingOutcome:
    """Train a candidate on ``training_set`` (a CSV/JSON with text and label columns; default: the
    prepared first training set) and promote it if it beats the champion on the shared eval set.
    ``report`` is the evidence that asked for this run (a drift report), kept in the history.
    ``reference_set`` (texts) becomes this model's monitoring reference; without it the model
    inherits the champion's. ``labels_until`` (ISO time): the newest production label the
    training set was built from, kept as the version's ``data.labels_until`` (the next retrain
    reads only the labels posted after it)."""
    settings = flow_settings(config)
    parts = wiring.build(settings)
    run_id = str(flow_run.id or "local")

    inputs = training_data(settings, parts, training_set)
    fitted = fit_candidate(settings, inputs)
    scores, rows = model.evaluate(fitted.model, inputs.eval_set)
    incumbent = champion_to_beat(parts, inputs)
    reference = reference_tags(parts, reference_set, incumbent)
    decision = decide_promotion(scores, incumbent.report, settings.promotion)
    get_run_logger().info(
        "promotion decision: %s (%s)", "promote" if decision.promote else "keep champion", decision.reason
    )
    eval_dir = parts.reports_dir / f"eval-{run_id}"
    model.write_eval_artifacts(scores, rows, eval_dir)
    tags = describe.version_tags(
        describe.Lineage(
            inputs.splits.lineage(),
            inputs.version,
            int(inputs.frame[LABEL].nunique()),
            fitted.rows,
            git_commit(),
            settings.config_hash(),
            run_id,
        ),
        scores=scores,
        decision=decision,
        family=fitted.settings.family,
        trigger=trigger,
        reason=reason,
        report=report,
        reference=reference,
        selection=fitted.selection.tags() if fitted.selection else {},
        fit_info=getattr(fitted.model, "info", {}),
    )
    if labels_until:
        tags[describe.LABELS_UNTIL_TAG] = labels_until
    ref = model.register_model(
        parts.registry,
        fitted.model,
        tags=tags,
        metrics=describe.run_metrics(scores, incumbent.report),
        params={"family": fitted.settings.family, **fitted.settings.params, "train_rows": fitted.rows},
        run_name=f"train-{trigger}",
        input_example=list(inputs.eval_set[TEXT].head(3)),
        artifacts={"evaluation": eval_dir},
    )
    # With a rollout policy, a candidate that passed the offline gate reaches users only through
    # the rollout flow (the first model has nothing to be compared with and is promoted at once).
    staged = settings.rollout.enabled and incumbent.ref is not None
    move_aliases(parts, ref, decision, staged, reason=reason, report=report, actor=f"prefect:{run_id}")
    publish(settings, parts, ref, scores, incumbent, decision, staged, reason=reason, training_set=inputs.version)
    return TrainingOutcome(
        ref,
        scores,
        incumbent.report,
        decision,
        inputs.version.md5,
        ref if decision.promote and not staged else incumbent.ref,
        selection=fitted.selection,
    )


def training_data(settings: Settings, parts: wiring.Components, training_set: str | None) -> TrainingData:
    """Read ``training_set`` (default: the prepared training split), validate it against the label
    set and the evaluation set, and version it with DVC."""
    splits = data.prepare(settings.data, parts.prepared_dir)
    source = Path(training_set) if training_set else splits["train"]
    frame = dataset.read_labelled(source, TEXT, LABEL)
    eval_set = splits.read("eval")
    label_set = dataset.read_labels(splits["labels"])
    data.validate_training_set(frame, source=str(source), known_labels=label_set, eval_texts=list(eval_set[TEXT]))
    version = data.commit_dataset(parts.datasets, frame, "training")
    return TrainingData(splits, source, frame, eval_set, version)


def fit_candidate(settings: Settings, inputs: TrainingData) -> Fitted:
    """Choose the settings (with a search grid) and fit the candidate on the whole training set,
    or keep the selection's own fit (``selection.refit: false``)."""
    chosen = select_model(str(inputs.source), settings.model, settings.selection, seed=settings.data.seed)
    model_cfg = chosen.model if chosen else settings.model
    if chosen is not None and not chosen.refit:
        # selection.refit false: the winner as trained for its holdout, not fitted a second time.
        get_run_logger().info(
            "registering %s as selected (selection.refit: false): fitted on %d of %d rows",
            chosen.chosen.candidate.name,
            chosen.chosen.train_rows,
            len(inputs.frame),
        )
        return Fitted(chosen.chosen.model, model_cfg, chosen.chosen.train_rows, chosen)
    # A long fit (the transformer family fine-tuning) resumes from its checkpoint when a crashed
    # run is retried on the same training set and settings.
    fitted = model.train(inputs.frame, model_cfg, seed=settings.data.seed, checkpoint_root=settings.checkpoints_dir)
    return Fitted(fitted, model_cfg, len(inputs.frame), chosen)


def champion_to_beat(parts: wiring.Components, inputs: TrainingData) -> Incumbent:
    """The current champion, its tags, and its scores on this run's evaluation set."""
    current = model.champion_ref(parts.registry)
    if current is None:
        return Incumbent(None, {}, None)
    tags = model.version_tags(parts.registry, current)
    splits = inputs.splits
    if tags.get("data.key", splits.key) != splits.key:
        get_run_logger().warning(
            "the champion %s was trained on data set %r (key %s); this candidate on %r (key %s): "
            "both are evaluated on the latter's evaluation set",
            current,
            tags.get("data.name"),
            tags["data.key"],
            splits.name,
            splits.key,
        )
    scores, _ = model.evaluate(model.load_model(parts.registry, current), inputs.eval_set)
    return Incumbent(current, tags, scores)


def reference_tags(parts: wiring.Components, reference_set: str | None, incumbent: Incumbent) -> dict[str, str]:
    """The candidate's monitoring reference: ``reference_set`` versioned with DVC, else the
    champion's."""
    if reference_set:
        ref_version = data.commit_dataset(
            parts.datasets, dataset.read_labelled(reference_set, TEXT, LABEL), "reference"
        )
        return {"reference.md5": ref_version.md5, "reference.rows": str(ref_version.rows)}
    return describe.inherited_reference(incumbent.tags)


def move_aliases(
    parts: wiring.Components,
    ref: ModelRef,
    decision: PromotionDecision,
    staged: bool,
    *,
    reason: str,
    report: str,
    actor: str,
) -> None:
    """The candidate becomes the challenger; promoted at once when it passed the gate and no
    rollout stands between it and users (``staged``)."""
    why = f"{reason}; {decision.reason}"
    model.move_alias(
        parts.registry, parts.history, CHALLENGER, ref, action="register", reason=why, actor=actor, report=report
    )
    if not decision.promote:
        return
    if staged:
        get_run_logger().info("%s is the challenger; the rollout flow decides on live traffic", ref)
        return
    model.move_alias(
        parts.registry, parts.history, CHAMPION, ref, action="promote", reason=why, actor=actor, report=report
    )
    model.clear_alias(parts.registry, parts.history, CHALLENGER, reason=f"{ref} became champion", actor=actor)


def publish(
    settings: Settings,
    parts: wiring.Components,
    ref: ModelRef,
    scores: EvalReport,
    incumbent: Incumbent,
    decision: PromotionDecision,
    staged: bool,
    *,
    reason: str,
    training_set: DataVersion,
) -> None:
    """The run's artifacts: candidate vs champion, the promotion summary, the version's link."""
    create_table_artifact(
        describe.comparison_rows(ref, scores, incumbent.ref, incumbent.report),
        key="candidate-vs-champion",
        description="shared evaluation set",
    )
    create_markdown_artifact(
        describe.promotion_markdown(
            ref, decision, staged=staged, reason=reason, training_set=training_set, scores=scores
        ),
        key="promotion",
        description=decision.reason,
    )
    create_link_artifact(
        parts.registry.version_url(ref, settings.registry.ui_url),
        link_text=f"{ref} in the MLflow registry",
        key="model-version",
    )
