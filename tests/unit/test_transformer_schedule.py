"""The fine-tuning schedule and time budget of the transformer family: pure arithmetic, checked
without a network, a GPU or a real clock (the budget's clock is a list of readings)."""

from __future__ import annotations

import itertools

import pytest

from driftloop.models.transformer.budget import TimeBudget, format_eta, loop_seconds
from driftloop.models.transformer.schedule import lr_factor, schedule_progress


def factors(total: int, warmup: float) -> list[float]:
    return [lr_factor(schedule_progress(step, total), total, warmup) for step in range(total + 1)]


def test_the_rate_warms_up_linearly_then_decays_to_zero_at_the_last_step():
    f = factors(100, 0.1)
    assert f[0] == pytest.approx(0.1)  # the first step already trains: 1 / (100 * 0.1)
    assert f[4] == pytest.approx(0.5)
    assert f[9] == pytest.approx(1.0)  # the top at the end of warm-up
    assert f[10] == pytest.approx(1.0)
    assert f[55] == pytest.approx(0.5)
    assert f[100] == 0.0
    assert all(a <= b for a, b in itertools.pairwise(f[:10]))  # rising during warm-up
    assert all(a >= b for a, b in itertools.pairwise(f[10:]))  # falling after it
    assert max(f) == 1.0 and min(f) == 0.0


def test_no_warmup_starts_at_the_full_rate():
    assert factors(10, 0.0)[:3] == pytest.approx([1.0, 0.9, 0.8])


def test_the_time_fraction_takes_over_when_it_runs_ahead_of_the_steps():
    # 10 of 1000 steps done but 80% of the time spent: the rate is that of 80% progress.
    assert schedule_progress(10, 1000, 0.8) == 0.8
    assert schedule_progress(900, 1000, 0.2) == 0.9
    assert lr_factor(schedule_progress(10, 1000, 0.8), 1000, 0.06) == pytest.approx(0.2 / 0.94)
    assert lr_factor(1.5, 1000, 0.06) == 0.0  # past the limit: zero, never negative


class Clock:
    """A clock that reads ``now`` (seconds), moved by the test."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_loop_gets_what_is_left_of_max_minutes_less_the_closing_passes():
    assert loop_seconds(0.0, spent_s=100, closing_s=10) == 0.0  # no limit
    assert loop_seconds(2.0, spent_s=30, closing_s=20) == 70.0
    assert loop_seconds(1.0, spent_s=100, closing_s=10) == 1.0  # overspent: a second, not less


def test_an_unlimited_budget_is_never_spent():
    clock = Clock()
    budget = TimeBudget(0.0, clock=clock)
    budget.start()
    clock.now = 1e9
    assert not budget.limited and budget.fraction() == 0.0 and not budget.exhausted()
    assert budget.cap_eta(123.0) == 123.0


def test_a_budget_counts_from_its_start():
    clock = Clock(5.0)
    budget = TimeBudget(60.0, clock=clock)
    clock.now = 10.0
    budget.start()
    assert budget.limited and budget.elapsed() == 0.0 and budget.fraction() == 0.0
    clock.now = 40.0
    assert budget.elapsed() == 30.0 and budget.fraction() == pytest.approx(0.5)
    assert budget.cap_eta(1000.0) == pytest.approx(30.0)  # 30 s of the 60 left
    assert budget.cap_eta(12.0) == 12.0  # the steps' own estimate when it is sooner
    assert not budget.exhausted()
    clock.now = 70.0
    assert budget.exhausted() and budget.cap_eta(1000.0) == pytest.approx(0.0)
    clock.now = 80.0
    assert budget.fraction() == pytest.approx(70 / 60)


def test_a_resumed_run_spreads_what_was_left_over_its_own_budget():
    clock = Clock()
    budget = TimeBudget(100.0, done_before=0.6, clock=clock)
    budget.start()
    assert budget.fraction() == pytest.approx(0.6)  # where the earlier runs stopped
    clock.now = 50.0
    assert budget.fraction() == pytest.approx(0.8)  # half of the remaining 40%
    assert budget.cap_eta(1000.0) == pytest.approx(50.0)  # 50 s of this run's 100 left
    assert not budget.exhausted()
    clock.now = 100.0
    assert budget.exhausted()


def test_eta_reads_hours_minutes_seconds():
    assert format_eta(0) == "0:00:00"
    assert format_eta(3725.9) == "1:02:05"
    assert format_eta(-5) == "0:00:00"
