"""Rollouts: the stages a challenger goes through, the live numbers each stage is judged on, and
the alias and routing moves that start, advance, promote, withdraw or undo one.

The desired traffic split lives with the registry (:meth:`Registry.set_rollout_state`); every
serving replica converges to it. Each move that changes who answers users is also a line in the
champion history, with who did it and why, whether the rollout flow decided it or a person.
Deciding is :mod:`driftloop.core.analysis`'s job (pure functions); this module applies decisions.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd

from driftloop.adapters import logstore
from driftloop.adapters.history import ChampionHistory, now_iso
from driftloop.adapters.logstore import LogRoot
from driftloop.adapters.registry import CHALLENGER, CHAMPION, Registry
from driftloop.config.settings import RolloutSettings, StageSpec
from driftloop.core import analysis
from driftloop.core.analysis import ArmStats
from driftloop.core.errors import RunFailed
from driftloop.core.types import (
    MODE_AB,
    MODE_BLUEGREEN,
    MODE_CANARY,
    MODE_SHADOW,
    SLOT_CANARY,
    SLOT_CHAMPION,
    SLOT_SHADOW,
    HistoryEntry,
    ModelRef,
    RolloutState,
)
from driftloop.rollout import champion

# The kinds of step a plan can hold beyond the configured stages.
KIND_AB = "ab"
KIND_STANDBY = "standby"


@dataclass(frozen=True)
class Step:
    """One step of a rollout plan: how traffic is split while it runs, and how it is judged."""

    name: str
    kind: str  # shadow | canary | ab | standby
    mode: str  # the RolloutState mode replicas route by
    weight: float
    min_samples: int
    max_duration_s: float


def plan(cfg: RolloutSettings) -> list[Step]:
    """The steps of ``cfg.strategy`` before promotion.

    - progressive: the configured stages (e.g. shadow → canary 10% → canary 50%);
    - bluegreen: one standby step (the new version loaded and warm everywhere, no traffic), then
      one atomic switch; the bake after the switch is its analysis, the switch back is instant;
    - ab: one fixed split until the A/B decision.
    """
    if cfg.strategy == "progressive":
        return [
            Step(
                s.name,
                s.kind,
                MODE_SHADOW if s.kind == "shadow" else MODE_CANARY,
                s.weight,
                s.min_samples,
                s.max_duration_s,
            )
            for s in cfg.stages
        ]
    if cfg.strategy == "bluegreen":
        return [Step("standby", KIND_STANDBY, MODE_BLUEGREEN, 0.0, 0, cfg.bake.max_duration_s)]
    return [Step("ab-test", KIND_AB, MODE_AB, cfg.ab.weight, 0, cfg.ab.max_duration_s)]


def stage_spec(step: Step) -> StageSpec:
    """The analysis spec (kind, weight, sample and time limits) of a shadow or canary ``step``."""
    return StageSpec(
        name=step.name,
        kind="shadow" if step.kind == "shadow" else "canary",
        weight=step.weight,
        min_samples=step.min_samples,
        max_duration_s=step.max_duration_s,
    )


# The accuracy an A/B test's sample size is planned for when neither rollout.ab.baseline_accuracy
# nor the champion's evaluation accuracy is known: 0.5 needs the most samples, so the test is never
# planned smaller than it should be.
FALLBACK_AB_BASELINE = 0.5


def ab_baseline(cfg: RolloutSettings, champion_tags: Mapping[str, str]) -> float:
    """The baseline accuracy an A/B rollout plans its sample size for: the configured one, else the
    champion's evaluation accuracy (its ``metric.accuracy`` tag), else :data:`FALLBACK_AB_BASELINE`.
    The rollout flow and ``driftloop rollout status`` both ask here, so they plan the same test."""
    if cfg.ab.baseline_accuracy is not None:
        return cfg.ab.baseline_accuracy
    tag = champion_tags.get("metric.accuracy")
    return float(tag) if tag else FALLBACK_AB_BASELINE


def new_rollout_id() -> str:
    """A fresh id for one rollout."""
    return uuid.uuid4().hex[:12]


def challenger_slot(step: Step) -> str:
    """The serving slot a step puts the challenger in: shadow for a shadow step, else canary."""
    return SLOT_SHADOW if step.kind == "shadow" else SLOT_CANARY


# -- live numbers ---------------------------------------------------------------------------------


def live_log(log_root: LogRoot, since: datetime) -> logstore.LiveLog:
    """The live numbers' source for a watch that polls: every prediction since ``since`` (shadow
    and failed ones too) with its feedback label, each poll reading only what arrived since the
    previous one (:class:`driftloop.adapters.logstore.LiveLog`)."""
    return logstore.LiveLog(log_root, since)


def live_frame(log_root: LogRoot, since: datetime) -> pd.DataFrame:
    """Every prediction since ``since`` (shadow and failed ones too) with its feedback label;
    only the partitions from ``since`` on are read. A watch that polls keeps a :func:`live_log`."""
    return live_log(log_root, since).frame()


def arms(
    frame: pd.DataFrame,
    champion_version: str,
    challenger_version: str,
    step: Step,
    low_confidence: float,
    since: datetime,
) -> tuple[ArmStats, ArmStats]:
    """The champion's and the challenger's numbers for one step, from ``since`` on.

    In a shadow step the challenger's arm is its mirrored answers, and agreement is measured on
    the requests both answered."""
    slot = challenger_slot(step)
    champ = analysis.arm_stats(frame, champion_version, SLOT_CHAMPION, low_confidence, since=since)
    compare = None
    if slot == SLOT_SHADOW:
        compare = frame[(frame["model_version"].astype(str) == champion_version) & (frame["slot"] == SLOT_CHAMPION)]
    chal = analysis.arm_stats(frame, challenger_version, slot, low_confidence, since=since, compare_with=compare)
    return champ, chal


def judge_promotion(
    live: logstore.LiveLog,
    baseline: ArmStats,
    promoted: ModelRef,
    promoted_at: datetime,
    cfg: RolloutSettings,
    low_confidence: float,
    elapsed_s: float,
) -> analysis.StageDecision:
    """A promoted champion's live numbers since ``promoted_at`` (``live``, a :func:`live_log` from
    then) against its predecessor's ``baseline`` (:func:`baseline_arm`): the bake's and the
    monitor's one judgement."""
    frame = live.frame()
    current = analysis.arm_stats(frame, promoted.version, SLOT_CHAMPION, low_confidence, since=promoted_at)
    return analysis.detect_regression(baseline, current, cfg.bake, cfg.guard, elapsed_s)


def baseline_arm(log_root: LogRoot, version: str, until: datetime, last: int, low_confidence: float) -> ArmStats:
    """A champion's own numbers over its newest ``last`` answers before ``until`` (the baseline a
    successor is held to after a promotion). Reads the newest partitions before ``until`` only,
    until ``last`` such answers are found."""
    frame = logstore.read_window(
        log_root,
        last,
        until=until,
        distinct_texts=False,
        model_version=version,
        slot=SLOT_CHAMPION,
        include_errors=True,
    )
    return analysis.arm_stats(frame, version, SLOT_CHAMPION, low_confidence, until=until, last=last)


# -- moves ------------------------------------------------------------------------------------------


def _record(
    history: ChampionHistory,
    model: str,
    alias: str,
    from_version: str | None,
    to_version: str | None,
    action: str,
    reason: str,
    actor: str,
    report: str = "",
) -> HistoryEntry:
    return history.append(
        HistoryEntry(
            time=now_iso(),
            model=model,
            alias=alias,
            from_version=from_version,
            to_version=to_version,
            action=action,
            reason=reason,
            actor=actor,
            report=report,
        )
    )


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
    """Publish the step's split and record it. The challenger alias points at the version rolled
    out (set here too, so a rollout of a version given by number is visible in the registry)."""
    current = registry.champion()
    if current is None:
        raise RunFailed("no champion: a rollout needs a version to compare the challenger with")
    if current == challenger:
        raise RunFailed(f"{challenger} is already the champion")
    if registry.challenger() != challenger:
        registry.set_alias(CHALLENGER, challenger)
    state = RolloutState(
        rollout_id=rollout_id,
        mode=step.mode,
        challenger=challenger.version,
        weight=step.weight if step.mode in (MODE_CANARY, MODE_AB) else 0.0,
        stage=step.name,
        since=now_iso(),
        actor=actor,
    )
    registry.set_rollout_state(state)
    share = (
        f"{step.weight:.0%} of callers"
        if state.weight
        else ("a mirrored copy of traffic" if step.mode == MODE_SHADOW else "no traffic, loaded and warm")
    )
    _record(
        history,
        challenger.name,
        CHALLENGER,
        current.version,
        challenger.version,
        f"stage:{step.name}",
        f"rollout {rollout_id}: {step.name} ({share}); {reason}",
        actor,
    )
    return state


def promote(
    registry: Registry, history: ChampionHistory, challenger: ModelRef, *, reason: str, actor: str, report: str = ""
) -> HistoryEntry:
    """Make ``challenger`` the champion for all traffic: one alias move (replicas already hold it
    warm), then the split and the challenger alias are cleared."""
    entry = champion.move_alias(
        registry, history, CHAMPION, challenger, action="promote", reason=reason, actor=actor, report=report
    )
    registry.set_rollout_state(RolloutState(actor=actor))
    if registry.challenger() == challenger:
        registry.delete_alias(CHALLENGER)
    return entry


def withdraw(
    registry: Registry, history: ChampionHistory, *, reason: str, actor: str, action: str = "rollback", report: str = ""
) -> HistoryEntry | None:
    """Take the challenger out of traffic: the champion answers 100% again at once (the split is
    cleared first), then the challenger alias is removed. None when nothing was rolled out."""
    state = registry.rollout_state()
    registry.set_rollout_state(RolloutState(actor=actor))
    target = registry.challenger()
    version = target.version if target else state.challenger
    if target is not None:
        registry.delete_alias(CHALLENGER)
    if version is None:
        return None
    return _record(
        history,
        registry.model_name,
        CHALLENGER,
        version,
        None,
        action,
        f"rollout {state.rollout_id or '-'} at {state.stage or '-'}: {reason}",
        actor,
        report,
    )


def rollback_champion(
    registry: Registry,
    history: ChampionHistory,
    *,
    reason: str,
    actor: str,
    report: str = "",
    expected: ModelRef | None = None,
) -> HistoryEntry | None:
    """Return the champion to the last good version in the history; any rollout in progress is
    withdrawn first. With ``expected``, nothing happens unless that version is still the
    champion (two watchers of one promotion never roll back twice). None when nothing moved."""
    if expected is not None and registry.champion() != expected:
        return None
    if registry.rollout_state().active:
        withdraw(registry, history, reason=f"champion rollback: {reason}", actor=actor, action="abort")
    return champion.rollback(registry, history, reason=reason, actor=actor, report=report)


def promotion_under_watch(
    history: ChampionHistory, current: ModelRef, now: datetime, watch_s: float
) -> HistoryEntry | None:
    """The history line that made ``current`` the champion by a promotion less than ``watch_s``
    ago, replacing an earlier champion (the baseline it is held to); None otherwise."""
    for entry in reversed(history.entries()):
        if entry.alias != CHAMPION or entry.to_version is None:
            continue
        if entry.to_version != current.version or entry.action != "promote" or not entry.from_version:
            return None
        age = (now - datetime.fromisoformat(entry.time)).total_seconds()
        return entry if age <= watch_s else None
    return None


def is_current(registry: Registry, rollout_id: str) -> bool:
    """Whether the registry still routes by this rollout (a person may have promoted or aborted)."""
    return registry.rollout_state().rollout_id == rollout_id


def status_rows(champ: ArmStats | None, chal: ArmStats | None) -> list[dict[str, object]]:
    """One row per arm for ``driftloop rollout status``."""
    rows = []
    for arm in (champ, chal):
        if arm is None:
            continue
        rows.append(
            {
                "slot": arm.slot,
                "version": arm.version,
                "n": arm.n,
                "errors": arm.errors,
                "p95_ms": arm.p95_ms,
                "low_conf": arm.low_confidence_rate if arm.n else None,
                "labelled": arm.n_labelled,
                "accuracy": arm.accuracy,
                "agreement": arm.agreement,
            }
        )
    return rows


def parse_since(state: RolloutState) -> datetime:
    """When the rollout state's current step started (now, when the state does not say)."""
    if not state.since:
        return datetime.now(UTC)
    return datetime.fromisoformat(state.since)


def step_of(cfg: RolloutSettings, state: RolloutState) -> Step | None:
    """The plan step a published state belongs to (None for a state this config does not plan)."""
    for step in plan(cfg):
        if step.name == state.stage:
            return step
    return None
