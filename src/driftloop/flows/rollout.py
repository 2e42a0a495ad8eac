"""challenger → each step of the strategy (analysis between steps) → promote or roll back → bake.

A promotion that regresses during the bake is rolled back; the retrain that follows is the
caller's to open (``on_regression``, which the retraining flow and ``driftloop rollout start``
pass: :func:`driftloop.flows.retraining.retrain_after_regression`), so this module does not
depend on the retraining flow that starts it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run

from driftloop.adapters import tracing, wiring
from driftloop.adapters.history import TriggerLedger
from driftloop.config.settings import RolloutSettings, Settings
from driftloop.core import analysis
from driftloop.core.errors import RunFailed
from driftloop.core.overlays import flow_settings
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
    """How a rollout ended: its result and stage, why, and who is champion afterwards."""

    rollout_id: str
    challenger: ModelRef
    previous: ModelRef
    result: str
    stage: str
    reason: str
    champion: ModelRef | None
    retrain: Any = None


class RegressionRetrain(Protocol):
    """What a rollout calls after undoing a promotion that regressed: open a retrain run with the
    evidence (``window_id`` recorded in ``ledger`` first); returns its outcome, or None."""

    def __call__(
        self,
        regressed: ModelRef,
        because: str,
        *,
        requested_by: str,
        window_id: str,
        evidence: str,
        ledger: TriggerLedger,
        config: list[str] | None,
    ) -> Any: ...


@dataclass(frozen=True)
class Rollout:
    """One rollout in progress: its id, the challenger, the champion it is measured against, and
    the settings and adapters it runs with."""

    rollout_id: str
    target: ModelRef
    current: ModelRef
    why: str
    cfg: RolloutSettings
    settings: Settings
    parts: wiring.Components
    run_id: str

    @property
    def actor(self) -> str:
        """Who the history names for this rollout's moves."""
        return f"prefect:{self.run_id}"

    @property
    def out_dir(self) -> Path:
        """Where the analyses are written."""
        return self.parts.reports_dir / "rollouts"


@dataclass(frozen=True)
class Stages:
    """Where the strategy's steps left the rollout: the last decision and its analysis, or how
    the rollout ended before promotion (result, stage, reason)."""

    decision: analysis.StageDecision | None
    report: str
    ended: tuple[str, str, str] | None = None


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
    on_regression: Callable[..., Any] | None = None,
) -> RolloutOutcome:
    """Carry a registered challenger (``challenger``: a version number; default: the
    ``challenger`` alias) through the rollout strategy, promote it or roll it back, then watch
    the new champion against the previous one's baseline and undo the promotion on a regression.
    With ``rollout.bake.retrain_on_regression``, ``on_regression`` (a :class:`RegressionRetrain`)
    then opens a retrain run with the evidence."""
    run = begin(challenger, strategy, requested_by, reason, config)
    stages = run_stages(run)
    if stages.ended is not None:
        return finish(run, *stages.ended)
    because, promoted_at = promote(run, stages)
    bake = steps.watch_bake(
        run.parts.registry,
        run.parts.log_root,
        run.current,
        run.target,
        promoted_at,
        run.cfg,
        run.settings.monitor.low_confidence,
    )
    if bake is None:
        return finish(run, ENDED_BY_HAND, "bake", "the champion was moved by hand during the bake")
    evidence = str(steps.publish_analysis(bake, run.out_dir, run.rollout_id))
    if bake.action != analysis.ACTION_ROLLBACK:
        return finish(run, PROMOTED, "bake", f"{because} Bake: {bake.reason}")
    retrain = undo_regression(run, bake, evidence, on_regression, config)
    return finish(run, REGRESSED, "bake", bake.reason, retrain)


def begin(
    challenger: str | None, strategy: str | None, requested_by: str, reason: str, config: list[str] | None
) -> Rollout:
    """Resolve the settings (``strategy`` overrides the configured one), the challenger and the
    champion; a rollout without both is refused."""
    settings = flow_settings(config)
    cfg = settings.rollout
    if strategy is not None:
        cfg = type(cfg).model_validate({**cfg.model_dump(), "strategy": strategy})
    parts = wiring.build(settings)
    current = model.champion_ref(parts.registry)
    target = ModelRef(parts.registry.model_name, str(challenger)) if challenger else parts.registry.challenger()
    if current is None or target is None:
        raise RunFailed(f"a rollout needs a champion and a challenger (champion: {current}, challenger: {target})")
    rollout_id = plan_.new_rollout_id()
    why = reason or f"rollout of {target} requested by {requested_by}"
    get_run_logger().info("rollout %s: %s against champion %s, strategy %s", rollout_id, target, current, cfg.strategy)
    return Rollout(rollout_id, target, current, why, cfg, settings, parts, str(flow_run.id or "local"))


def run_stages(run: Rollout) -> Stages:
    """Each step of the strategy's plan: publish it, watch it until its analysis decides, and
    withdraw the challenger when the analysis says roll back."""
    parts = run.parts
    baseline_accuracy = (
        plan_.ab_baseline(run.cfg, model.version_tags(parts.registry, run.current))
        if run.cfg.strategy == "ab"
        else None
    )
    plan = plan_.plan(run.cfg)
    decision: analysis.StageDecision | None = None
    report = ""
    for i, step in enumerate(plan):
        state = steps.enter_step(
            parts.registry,
            parts.history,
            run.rollout_id,
            run.target,
            step,
            actor=run.actor,
            reason=run.why if decision is None else decision.reason,
        )
        if step.kind == plan_.KIND_STANDBY:
            # Blue-green: replicas load and warm the new version before any traffic reaches it;
            # give them a few polls, then switch atomically (the analysis runs in the bake).
            time.sleep(run.settings.serving.reload_interval_s * 3)
            continue
        decision = steps.watch_step(
            parts.registry,
            parts.log_root,
            run.rollout_id,
            run.current,
            run.target,
            step,
            run.cfg,
            run.settings.monitor.low_confidence,
            plan_.parse_since(state),
            i == len(plan) - 1,
            baseline_accuracy,
        )
        if decision is None:
            return Stages(None, report, (ENDED_BY_HAND, step.name, "promoted, aborted or rolled back by hand"))
        report = str(steps.publish_analysis(decision, run.out_dir, run.rollout_id))
        if decision.action == analysis.ACTION_ROLLBACK:
            steps.withdraw(parts.registry, parts.history, reason=decision.reason, actor=run.actor, report=report)
            return Stages(decision, report, (ROLLED_BACK, step.name, decision.reason))
    return Stages(decision, report)


def promote(run: Rollout, stages: Stages) -> tuple[str, datetime]:
    """Make the challenger champion after the last step; returns why, and when (the bake's start)."""
    promoted_at = datetime.now(UTC)
    because = stages.decision.reason if stages.decision is not None else f"blue-green switch to {run.target}"
    steps.promote(
        run.parts.registry,
        run.parts.history,
        run.target,
        reason=f"{run.why}; rollout {run.rollout_id}: {because}",
        actor=run.actor,
        report=stages.report,
    )
    get_run_logger().info("promoted %s; watching it against %s's baseline", run.target, run.current)
    return because, promoted_at


def undo_regression(
    run: Rollout,
    bake: analysis.StageDecision,
    evidence: str,
    on_regression: RegressionRetrain | None,
    config: list[str] | None,
) -> Any:
    """Give the champion back to the previous version, then open the retrain the settings ask
    for through ``on_regression``; returns the retrain's outcome (None without one)."""
    steps.rollback_champion(
        run.parts.registry,
        run.parts.history,
        reason=f"post-promotion regression: {bake.reason}",
        actor=run.actor,
        report=evidence,
        expected=run.target,
    )
    if not run.cfg.bake.retrain_on_regression:
        return None
    if on_regression is None:
        get_run_logger().warning(
            "rollout.bake.retrain_on_regression is set, but this rollout was started without a retrain "
            "to open (on_regression); no retrain run for %s",
            run.target,
        )
        return None
    return on_regression(
        run.target,
        bake.reason,
        requested_by="rollout-guard",
        window_id=f"regression-{run.rollout_id}",
        evidence=evidence,
        ledger=run.parts.ledger,
        config=config,
    )


def finish(run: Rollout, result: str, stage: str, because: str, retrain: Any = None) -> RolloutOutcome:
    """Record how the rollout ended (an MLflow run and a tag on the challenger, a table artifact)."""
    after = run.parts.registry.champion()
    steps.record_outcome(
        run.parts.registry,
        run.rollout_id,
        run.target,
        run.current,
        result,
        stage,
        because,
        sorted(run.out_dir.glob(f"rollout-{run.rollout_id}-*.md")),
        run.run_id,
    )
    create_table_artifact(
        [
            {
                "rollout": run.rollout_id,
                "challenger": str(run.target),
                "previous champion": str(run.current),
                "result": result,
                "at stage": stage,
                "champion now": str(after),
                "reason": because[:300],
            }
        ],
        key="rollout-outcome",
        description=f"{run.target}: {result}",
    )
    return RolloutOutcome(run.rollout_id, run.target, run.current, result, stage, because, after, retrain)
