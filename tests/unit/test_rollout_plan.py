"""Rollout plans, the stage settings' validation and which promotion is still under watch
(pure parts of driftloop.rollout.stages; the moves themselves run against a real registry in
tests/flows/test_rollout_flow.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import yaml
from pydantic import ValidationError

from driftloop.adapters.history import FileChampionHistory
from driftloop.config.settings import RolloutSettings, load_settings
from driftloop.core.types import HistoryEntry, ModelRef
from driftloop.rollout.stages import KIND_AB, KIND_STANDBY, plan, promotion_under_watch, stage_spec


def test_the_default_plan_is_shadow_then_growing_canaries():
    steps = plan(RolloutSettings())
    assert [(s.name, s.mode, s.weight) for s in steps] == [
        ("shadow", "shadow", 0.0),
        ("canary-10", "canary", 0.1),
        ("canary-50", "canary", 0.5),
    ]
    assert stage_spec(steps[1]).weight == 0.1


def test_blue_green_and_ab_plans():
    [standby] = plan(RolloutSettings(strategy="bluegreen"))
    assert (standby.kind, standby.mode, standby.weight) == (KIND_STANDBY, "bluegreen", 0.0)
    [ab] = plan(RolloutSettings(strategy="ab", ab={"weight": 0.3}))
    assert (ab.kind, ab.mode, ab.weight) == (KIND_AB, "ab", 0.3)


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([], "at least one stage"),
        (
            [{"name": "a", "kind": "canary", "weight": 0.5}, {"name": "b", "kind": "canary", "weight": 0.1}],
            "must not decrease",
        ),
        ([{"name": "a", "kind": "canary", "weight": 1.0}], "between 0 and 1"),
        ([{"name": "a", "kind": "canary", "weight": 0.0}], "between 0 and 1"),
        ([{"name": "a", "kind": "shadow", "weight": 0.2}], "leave weight at 0"),
        ([{"name": "a", "kind": "shadow"}, {"name": "a", "kind": "canary", "weight": 0.1}], "unique"),
        ([{"name": "a", "kind": "mirror"}], "kind"),
    ],
)
def test_bad_stages_fail_at_start_naming_the_problem(stages, message, tmp_path):
    overlay = tmp_path / "o.yaml"
    overlay.write_text(yaml.safe_dump({"rollout": {"stages": stages}}))
    with pytest.raises(ValidationError, match=message):
        load_settings([str(overlay)])


def test_the_rollout_overlay_enables_the_policy():
    s = load_settings(["rollout"])
    assert s.rollout.enabled and [st.name for st in s.rollout.stages] == ["shadow", "canary-10", "canary-50"]
    assert not load_settings().rollout.enabled


def entry(time: datetime, action: str, from_version, to_version, alias="champion") -> HistoryEntry:
    return HistoryEntry(
        time=time.isoformat(),
        model="m",
        alias=alias,
        from_version=from_version,
        to_version=to_version,
        action=action,
        reason="",
        actor="test",
    )


def test_only_a_recent_promotion_over_an_earlier_champion_is_under_watch(tmp_path):
    now = datetime(2026, 11, 28, 12, tzinfo=UTC)
    history = FileChampionHistory(tmp_path / "h.jsonl")
    history.append(entry(now - timedelta(hours=3), "promote", None, "1"))
    assert promotion_under_watch(history, ModelRef("m", "1"), now, 86400) is None, "the first model has no baseline"
    history.append(entry(now - timedelta(hours=2), "promote", "1", "2"))
    history.append(entry(now - timedelta(hours=1), "stage:shadow", "2", "3", alias="challenger"))
    watched = promotion_under_watch(history, ModelRef("m", "2"), now, 86400)
    assert watched is not None and watched.from_version == "1"
    assert promotion_under_watch(history, ModelRef("m", "2"), now, 3600) is None, "older than watch_s"
    assert promotion_under_watch(history, ModelRef("m", "1"), now, 86400) is None, "not the promoted version"
    history.append(entry(now - timedelta(minutes=5), "rollback", "2", "1"))
    assert promotion_under_watch(history, ModelRef("m", "1"), now, 86400) is None, "a rollback is not a promotion"
    assert history.last_good(exclude="1") is None, "v2 was rolled back from: never a rollback target again"


def test_the_ab_baseline_is_the_configured_one_else_the_champions_else_the_most_conservative():
    from driftloop.rollout.stages import FALLBACK_AB_BASELINE, ab_baseline

    configured = RolloutSettings(strategy="ab", ab={"baseline_accuracy": 0.7})
    assert ab_baseline(configured, {"metric.accuracy": "0.91"}) == 0.7
    default = RolloutSettings(strategy="ab")
    assert ab_baseline(default, {"metric.accuracy": "0.91"}) == 0.91
    assert ab_baseline(default, {}) == FALLBACK_AB_BASELINE == 0.5
