"""The fine-tuning loop's share of ``max_minutes``, and how much of it is spent.

``max_minutes`` bounds the whole fit: embedding the training set, the linear probe, fine-tuning
and the closing validation and calibration passes. The loop gets what is left when it starts,
less what the closing passes are expected to take. The clock is injectable (a function returning
seconds), so the arithmetic is testable without waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]


def loop_seconds(max_minutes: float, spent_s: float, closing_s: float) -> float:
    """Seconds of fine-tuning left by ``max_minutes`` after ``spent_s`` already spent and
    ``closing_s`` kept back for the closing passes; at least one second. 0 (no limit) when
    ``max_minutes`` is 0."""
    if not max_minutes:
        return 0.0
    return max(1.0, max_minutes * 60 - spent_s - closing_s)


class TimeBudget:
    """The loop's time limit: ``seconds`` from :meth:`start` (0: no limit).

    A resumed run spreads what was left of the schedule over its own budget: ``done_before`` is
    the fraction of the schedule spent by the runs before it, and :meth:`fraction` goes from there
    to 1 as this run's ``seconds`` pass.
    """

    def __init__(self, seconds: float, done_before: float = 0.0, clock: Clock = time.perf_counter) -> None:
        self.seconds = seconds
        self.done_before = done_before
        self._clock = clock
        self._started = clock()

    @property
    def limited(self) -> bool:
        """Whether there is a time limit at all."""
        return self.seconds > 0

    def start(self) -> None:
        """Start (or restart) the clock of this run's share."""
        self._started = self._clock()

    def elapsed(self) -> float:
        """Seconds since :meth:`start`."""
        return self._clock() - self._started

    def fraction(self) -> float:
        """The fraction of the whole schedule's time spent, resumed runs' included (0 when unlimited)."""
        if not self.limited:
            return 0.0
        return self.done_before + (1 - self.done_before) * self.elapsed() / self.seconds

    def exhausted(self) -> bool:
        """Whether the limit is reached (never when unlimited)."""
        return self.limited and self.fraction() >= 1

    def cap_eta(self, eta_s: float) -> float:
        """``eta_s`` (the steps' estimate of the time left), capped by the budget's time left."""
        if not self.limited:
            return eta_s
        return min(eta_s, (1 - self.fraction()) * self.seconds / max(1e-9, 1 - self.done_before))


def format_eta(seconds: float) -> str:
    """``H:MM:SS`` of a whole number of seconds (negative counts as 0)."""
    whole = max(0, int(seconds))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"
