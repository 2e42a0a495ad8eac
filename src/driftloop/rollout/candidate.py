"""A trained candidate as the registry records it and as a person reads it: the version's lineage
tags, its metrics beside the champion's, and the promotion summary. Pure functions: values in,
values out (the training flow publishes them)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from driftloop.core.types import DataVersion, EvalReport, ModelRef, PromotionDecision

# Free-text tags (a reason, a report link) are cut to this many characters.
TAG_TEXT_CHARS = 500


@dataclass(frozen=True)
class Lineage:
    """Where a candidate came from: its data, its code and configuration, the run that made it."""

    data: Mapping[str, str]  # the prepared data set's lineage (PreparedData.lineage())
    training_set: DataVersion  # the DVC version of the exact training set
    labels: int  # distinct labels in the training set
    fitted_rows: int  # rows the model was fitted on (fewer than the set's with selection.refit false)
    git_commit: str
    config_hash: str
    flow_run_id: str


# The newest production label (ISO time, UTC) a version's training set was built from: the next
# retrain reads only the labels posted after it (older ones are in the set it restores by md5).
LABELS_UNTIL_TAG = "data.labels_until"


def version_tags(
    lineage: Lineage,
    *,
    scores: EvalReport,
    decision: PromotionDecision,
    family: str,
    trigger: str,
    reason: str,
    report: str,
    reference: Mapping[str, str],
    selection: Mapping[str, str],
    fit_info: Mapping[str, Any],
) -> dict[str, str]:
    """Every tag of the candidate's model version: lineage, why it was trained, the offline
    decision, its monitoring reference, how its settings were chosen and how its fit went."""
    return {
        **lineage.data,  # which data set, the key of its prepared splits, the raw files' hashes
        "data.md5": lineage.training_set.md5,
        "data.rows": str(lineage.training_set.rows),
        "data.labels": str(lineage.labels),
        "training.rows": str(lineage.fitted_rows),  # fewer than data.rows with selection.refit false
        "eval.md5": scores.eval_md5,
        "git.commit": lineage.git_commit,
        "config.hash": lineage.config_hash,
        "prefect.flow_run_id": lineage.flow_run_id,
        "trigger": trigger,
        "reason": reason[:TAG_TEXT_CHARS],
        "model.family": family,
        "driftloop.kind": "train",
        "report": report[:TAG_TEXT_CHARS],
        "decision": "promote" if decision.promote else "reject",
        "decision.reason": decision.reason[:TAG_TEXT_CHARS],
        **reference,
        **selection,
        # How a long fit went (transformer: steps, early stop, best validation accuracy, resumed from).
        **{f"training.{k}": str(v)[:TAG_TEXT_CHARS] for k, v in fit_info.items() if k != "history"},
    }


def inherited_reference(champion_tags: Mapping[str, str]) -> dict[str, str]:
    """The champion's monitoring reference tags, for a candidate trained without a new one."""
    return {k: v for k, v in champion_tags.items() if k.startswith("reference.")}


def run_metrics(scores: EvalReport, champion: EvalReport | None) -> dict[str, float]:
    """The training run's metrics: the candidate's, and the champion's as ``champion.*``."""
    return scores.metrics() | ({f"champion.{k}": v for k, v in champion.metrics().items()} if champion else {})


def comparison_rows(
    candidate: ModelRef, scores: EvalReport, champion: ModelRef | None, champion_scores: EvalReport | None
) -> list[dict[str, Any]]:
    """The candidate-vs-champion table: one row per model, metrics rounded to 4 places."""
    rows: list[dict[str, Any]] = [
        {"model": "candidate " + str(candidate), **{k: round(v, 4) for k, v in scores.metrics().items()}}
    ]
    if champion_scores:
        rows.append(
            {"model": "champion " + str(champion), **{k: round(v, 4) for k, v in champion_scores.metrics().items()}}
        )
    return rows


def outcome_title(decision: PromotionDecision, staged: bool) -> str:
    """What happened to the candidate, in a few words."""
    if not decision.promote:
        return "Not promoted"
    return "Challenger, to be rolled out" if staged else "Promoted"


def promotion_markdown(
    candidate: ModelRef,
    decision: PromotionDecision,
    *,
    staged: bool,
    reason: str,
    training_set: DataVersion,
    scores: EvalReport,
) -> str:
    """The promotion summary a training run publishes: the outcome, why, and its lineage."""
    return (
        f"## {outcome_title(decision, staged)}: {candidate}\n\n{decision.reason}\n\n"
        f"- reason: {reason}\n- training set: {training_set.rows} rows, DVC md5 `{training_set.md5}`\n"
        f"- evaluation set md5 `{scores.eval_md5}` ({scores.n} rows)\n"
        f"- restore the training set: `driftloop data restore --version {candidate.version}`\n"
    )
