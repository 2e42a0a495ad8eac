"""challenger → each step of the strategy (analysis between steps) → promote or roll back → bake."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run

from driftloop.adapters import tracing, wiring
from driftloop.config.settings import load_settings
from driftloop.core import analysis
from driftloop.core.errors import RunFailed
from driftloop.core.types import ModelRef
from driftloop.flows import source_version
from driftloop.rollout import stages as plan_
from driftloop.tasks import model, rollout as steps

PROMOTED = "promoted"
ROLLED_BACK = "rolled back"
REGRESSED = "promoted, then rolled back after a regression"
ENDED_BY_HAND = "ended by hand"


@dataclass(frozen=True)
class RolloutOutcome:
    rollout_id: str
    challenger: ModelRef
    previous: ModelRef
    result: str
    stage: str
    reason: str
    champion: ModelRef | None
    retrain: Any = None


def _run_name() -> str:
    params = flow_run.parameters or {}
    who = params.get("challenger") or "challenger"
    return f"rollout v{who} ({params.get('strategy') or 'configured strategy'})"


def span_attributes(out: RolloutOutcome) -> dict[str, Any]:
    """What the rollout run's span records about its result."""
    return {
        "driftloop.rollout_id": out.rollout_id,
        "driftloop.model_version": out.challenger.version,
        "driftloop.previous_version": out.previous.version,
        "driftloop.rollout_result": out.result,
        "driftloop.stage": out.stage,
        "driftloop.reason": out.reason[:500],
        "driftloop.champion_version": out.champion.version if out.champion else None,
    }


@flow(name="rollout", version=source_version(__file__), flow_run_name=_run_name, log_prints=True)
@tracing.traced_flow("rollout", run_id=lambda: str(flow_run.id or "local"), outcome=span_attributes)
def rollout(
    challenger: str | None = None,
    strategy: str | None = None,
    requested_by: str = "manual",
    reason: str = "",
    config: list[str] | None = None,
) -> RolloutOutcome:
    """Carry a registered challenger (``challenger``: a version number; default: the
    ``challenger`` alias) through the rollout strategy, promote it or roll it back, then watch
    the new champion against the previous one's baseline and undo the promotion on a regression
    (opening a retrain run with the evidence)."""
    settings = load_settings(config)
    cfg = settings.rollout
    if strategy is not None:
        cfg = type(cfg).model_validate({**cfg.model_dump(), "strategy": strategy})
    parts = wiring.build(settings)
    logger = get_run_logger()
    actor = f"prefect:{flow_run.id or 'local'}"
    low = settings.monitor.low_confidence
    out_dir = parts.reports_dir / "rollouts"

    current = model.champion_ref(parts.registry)
    target = ModelRef(parts.registry.model_name, str(challenger)) if challenger else parts.registry.challenger()
    if current is None or target is None:
        raise RunFailed(f"a rollout needs a champion and a challenger (champion: {current}, challenger: {target})")
    rollout_id = plan_.new_rollout_id()
    why = reason or f"rollout of {target} requested by {requested_by}"
    logger.info("rollout %s: %s against champion %s, strategy %s", rollout_id, target, current, cfg.strategy)
    baseline_accuracy = (
        plan_.ab_baseline(cfg, model.version_tags(parts.registry, current)) if cfg.strategy == "ab" else None
    )

    def finish(result: str, stage: str, because: str, retrain: Any = None) -> RolloutOutcome:
        after = parts.registry.champion()
        steps.record_outcome(
            parts.registry,
            rollout_id,
            target,
            current,
            result,
            stage,
            because,
            sorted(out_dir.glob(f"rollout-{rollout_id}-*.md")),
            str(flow_run.id or "local"),
        )
        create_table_artifact(
            [
                {
                    "rollout": rollout_id,
                    "challenger": str(target),
                    "previous champion": str(current),
                    "result": result,
                    "at stage": stage,
                    "champion now": str(after),
                    "reason": because[:300],
                }
            ],
            key="rollout-outcome",
            description=f"{target}: {result}",
        )
        return RolloutOutcome(rollout_id, target, current, result, stage, because, after, retrain)

    plan = plan_.plan(cfg)
    decision: analysis.StageDecision | None = None
    report = ""
    for i, step in enumerate(plan):
        state = steps.enter_step(
            parts.registry,
            parts.history,
            rollout_id,
            target,
            step,
            actor=actor,
            reason=why if i == 0 else decision.reason,
        )
        if step.kind == plan_.KIND_STANDBY:
            # Blue-green: replicas load and warm the new version before any traffic reaches it;
            # give them a few polls, then switch atomically (the analysis runs in the bake).
            time.sleep(settings.serving.reload_interval_s * 3)
            continue
        decision = steps.watch_step(
            parts.registry,
            parts.log_root,
            rollout_id,
            current,
            target,
            step,
            cfg,
            low,
            plan_.parse_since(state),
            i == len(plan) - 1,
            baseline_accuracy,
        )
        if decision is None:
            return finish(ENDED_BY_HAND, step.name, "promoted, aborted or rolled back by hand")
        report = str(steps.publish_analysis(decision, out_dir, rollout_id))
        if decision.action == analysis.ACTION_ROLLBACK:
            steps.withdraw(parts.registry, parts.history, reason=decision.reason, actor=actor, report=report)
            return finish(ROLLED_BACK, step.name, decision.reason)

    promoted_at = datetime.now(UTC)
    because = decision.reason if decision is not None else f"blue-green switch to {target}"
    steps.promote(
        parts.registry,
        parts.history,
        target,
        reason=f"{why}; rollout {rollout_id}: {because}",
        actor=actor,
        report=report,
    )
    logger.info("promoted %s; watching it against %s's baseline", target, current)
    bake = steps.watch_bake(parts.registry, parts.log_root, current, target, promoted_at, cfg, low)
    if bake is None:
        return finish(ENDED_BY_HAND, "bake", "the champion was moved by hand during the bake")
    evidence = str(steps.publish_analysis(bake, out_dir, rollout_id))
    if bake.action != analysis.ACTION_ROLLBACK:
        return finish(PROMOTED, "bake", f"{because} Bake: {bake.reason}")
    steps.rollback_champion(
        parts.registry,
        parts.history,
        reason=f"post-promotion regression: {bake.reason}",
        actor=actor,
        report=evidence,
        expected=target,
    )
    retrain = None
    if cfg.bake.retrain_on_regression:
        window = f"regression-{rollout_id}"
        parts.ledger.record(window, bake.reason, run=str(flow_run.id or "local"))
        from driftloop.flows.retraining import retraining

        state = retraining(
            reason=f"{target} regressed after promotion: {bake.reason}",
            requested_by="rollout-guard",
            window_id=window,
            report=evidence,
            min_new_labels=0,
            roll_out=False,
            config=config,
            return_state=True,
        )
        retrain = state.result() if state.is_completed() else None
        if retrain is None:
            logger.error("the retrain run opened after the regression ended %s", state.type.value)
    return finish(REGRESSED, "bake", bake.reason, retrain)
