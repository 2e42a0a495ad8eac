"""Rollout tasks: publish a step, watch it until its analysis decides, apply the decision."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from driftloop.adapters.history import ChampionHistory
from driftloop.adapters.logstore import LogRoot
from driftloop.adapters.registry import Registry
from driftloop.config.settings import RolloutSettings
from driftloop.core import analysis
from driftloop.core.analysis import StageDecision
from driftloop.core.types import HistoryEntry, ModelRef, RolloutState
from driftloop.rollout import stages as rollout
from driftloop.rollout.stages import Step
from driftloop.tasks import SERVER_RETRIES

# Progress lines while a step waits, at most this often.
PROGRESS_EVERY_S = 10.0
# Consecutive failed reads of the registry or the logs before a watch gives up. The watch is a poll
# loop paced by the stage's poll interval, not a retry of one call (driftloop.core.retry).
MAX_READ_FAILURES = 5


@task(cache_policy=NO_CACHE, **SERVER_RETRIES)
def enter_step(
    registry: Registry,
    history: ChampionHistory,
    rollout_id: str,
    challenger: ModelRef,
    step: Step,
    *,
    actor: str,
    reason: str,
) -> RolloutState:
    """Publish ``step`` of the rollout (the challenger alias, the traffic split) and record it in the history."""
    return rollout.enter_step(registry, history, rollout_id, challenger, step, actor=actor, reason=reason)


def _poll(decide: Callable[[float], StageDecision | None], poll_s: float, label: str) -> StageDecision | None:
    """Call ``decide(elapsed_s)`` every ``poll_s`` until it returns None or a decision other than
    wait, logging the waiting reason at most every :data:`PROGRESS_EVERY_S`."""
    logger = get_run_logger()
    started = last_progress = time.monotonic()
    failures = 0
    while True:
        try:
            decision = decide(time.monotonic() - started)
        except Exception as exc:
            # A registry or log read that fails once (a locked SQLite store, a network blip)
            # must not end a rollout that has been gathering evidence for minutes.
            failures += 1
            if failures > MAX_READ_FAILURES:
                raise
            logger.warning("%s: reading the live numbers failed (%d in a row), retrying: %s", label, failures, exc)
            time.sleep(poll_s)
            continue
        failures = 0
        if decision is None or decision.action != analysis.ACTION_WAIT:
            if decision is not None:
                logger.info("%s: %s", label, decision.reason)
            return decision
        if time.monotonic() - last_progress >= PROGRESS_EVERY_S:
            logger.info(decision.reason)
            last_progress = time.monotonic()
        time.sleep(poll_s)


@task(cache_policy=NO_CACHE)
def watch_step(
    registry: Registry,
    log_root: LogRoot,
    rollout_id: str,
    champion: ModelRef,
    challenger: ModelRef,
    step: Step,
    cfg: RolloutSettings,
    low_confidence: float,
    since: datetime,
    is_last: bool,
    baseline_accuracy: float | None = None,
) -> StageDecision | None:
    """Re-read the live numbers every ``cfg.poll_s`` until the step's analysis decides; None when
    the registry no longer routes by this rollout (promoted or aborted by hand). Each poll reads
    only the log lines written since the previous one."""
    live = rollout.live_log(log_root, since)

    def decide(elapsed: float) -> StageDecision | None:
        if not rollout.is_current(registry, rollout_id):
            get_run_logger().info("rollout %s was ended outside this flow run (by hand); stopping", rollout_id)
            return None
        frame = live.frame()
        champ, chal = rollout.arms(frame, champion.version, challenger.version, step, low_confidence, since)
        if step.kind == rollout.KIND_AB:
            baseline = rollout.FALLBACK_AB_BASELINE if baseline_accuracy is None else baseline_accuracy
            return analysis.decide_ab(champ, chal, cfg.ab, baseline, elapsed, cfg.guard)
        return analysis.decide_stage(champ, chal, rollout.stage_spec(step), cfg.guard, elapsed, is_last)

    return _poll(decide, cfg.poll_s, step.name)


@task(cache_policy=NO_CACHE)
def watch_bake(
    registry: Registry,
    log_root: LogRoot,
    previous: ModelRef,
    promoted: ModelRef,
    promoted_at: datetime,
    cfg: RolloutSettings,
    low_confidence: float,
) -> StageDecision | None:
    """After a promotion: the new champion's live numbers against the previous champion's
    baseline, until enough samples say it holds (or it regresses). None when the champion was
    moved by hand meanwhile."""
    baseline = rollout.baseline_arm(log_root, previous.version, promoted_at, cfg.bake.baseline_samples, low_confidence)
    live = rollout.live_log(log_root, promoted_at)

    def decide(elapsed: float) -> StageDecision | None:
        if registry.champion() != promoted:
            get_run_logger().info("the champion moved away from %s outside this flow run; stopping the bake", promoted)
            return None
        return rollout.judge_promotion(live, baseline, promoted, promoted_at, cfg, low_confidence, elapsed)

    return _poll(decide, cfg.poll_s, "bake")


@task(cache_policy=NO_CACHE)
def publish_analysis(decision: StageDecision, out_dir: Path, rollout_id: str) -> Path:
    """The analysis as a markdown artifact in the flow run and as a file (the evidence a history
    line or a retrain run points at)."""
    text = analysis.render_markdown(decision)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"rollout-{rollout_id}-{decision.stage}.md"
    path.write_text(text, encoding="utf-8")
    key = "".join(c if c.isalnum() else "-" for c in f"analysis-{decision.stage}".lower())
    create_markdown_artifact(text, key=key, description=f"{decision.stage}: {decision.action}")
    return path


@task(cache_policy=NO_CACHE, **SERVER_RETRIES)
def promote(
    registry: Registry, history: ChampionHistory, challenger: ModelRef, *, reason: str, actor: str, report: str = ""
) -> HistoryEntry:
    """Make ``challenger`` the champion and end the rollout's routing."""
    return rollout.promote(registry, history, challenger, reason=reason, actor=actor, report=report)


@task(cache_policy=NO_CACHE, **SERVER_RETRIES)
def withdraw(
    registry: Registry, history: ChampionHistory, *, reason: str, actor: str, action: str = "rollback", report: str = ""
) -> HistoryEntry | None:
    """Take the challenger out of traffic and end the rollout (None when there was nothing to withdraw)."""
    return rollout.withdraw(registry, history, reason=reason, actor=actor, action=action, report=report)


@task(cache_policy=NO_CACHE, **SERVER_RETRIES)
def rollback_champion(
    registry: Registry,
    history: ChampionHistory,
    *,
    reason: str,
    actor: str,
    report: str = "",
    expected: ModelRef | None = None,
) -> HistoryEntry | None:
    """Give the champion alias back to the version before it (None when ``expected`` is no longer
    champion or there is no earlier good version)."""
    return rollout.rollback_champion(registry, history, reason=reason, actor=actor, report=report, expected=expected)


@task(cache_policy=NO_CACHE)
def check_promotion(
    history: ChampionHistory, log_root: LogRoot, current: ModelRef, cfg: RolloutSettings, low_confidence: float
) -> StageDecision | None:
    """A recently promoted champion's live numbers against its predecessor's baseline (None when
    no promotion is under watch)."""
    now = datetime.now(UTC)
    entry = rollout.promotion_under_watch(history, current, now, cfg.bake.watch_s)
    if entry is None or entry.from_version is None:  # promotion_under_watch returns none without one
        return None
    promoted_at = datetime.fromisoformat(entry.time)
    baseline = rollout.baseline_arm(
        log_root, entry.from_version, promoted_at, cfg.bake.baseline_samples, low_confidence
    )
    return rollout.judge_promotion(
        rollout.live_log(log_root, promoted_at),
        baseline,
        current,
        promoted_at,
        cfg,
        low_confidence,
        (now - promoted_at).total_seconds(),
    )


@task(cache_policy=NO_CACHE, **SERVER_RETRIES)
def record_outcome(
    registry: Registry,
    rollout_id: str,
    challenger: ModelRef,
    previous: ModelRef,
    result: str,
    stage: str,
    reason: str,
    analyses: list[Path],
    flow_run_id: str,
) -> str:
    """The rollout as an MLflow run (its analyses as artifacts) and a tag on the challenger's
    version, so the registry shows how each version fared on live traffic."""
    registry.set_version_tag(challenger, "rollout.result", f"{result} at {stage} ({rollout_id})")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for path in analyses:
            shutil.copy(path, folder / path.name)
        return registry.log_run(
            f"rollout-{rollout_id}",
            params={"challenger": challenger.version, "previous": previous.version, "stage": stage, "reason": reason},
            tags={
                "driftloop.kind": "rollout",
                "prefect.flow_run_id": flow_run_id,
                "rollout.id": rollout_id,
                "rollout.result": result,
                "model.version": challenger.version,
            },
            artifacts={"analysis": folder} if analyses else {},
        )
