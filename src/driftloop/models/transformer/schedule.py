"""The fine-tuning learning-rate schedule: linear warm-up, then linear decay to zero.

A pure function of where the run stands, so it can be tested without a network or a clock.
"""

from __future__ import annotations


def schedule_progress(step: int, total_steps: int, time_fraction: float = 0.0) -> float:
    """How far the run is: the larger of the fraction of steps done and the fraction of the time
    budget spent (0 when there is no time limit), so a time-limited run still anneals instead of
    stopping at a high rate."""
    return max(step / total_steps, time_fraction)


def lr_factor(progress: float, total_steps: int, warmup_fraction: float) -> float:
    """The multiplier of the base learning rates at ``progress`` (0 at the start, 1 at the step or
    time limit).

    Linear warm-up over the first ``warmup_fraction`` of the run, reaching 1 at its end (the first
    step already trains at ``1 / (total_steps * warmup_fraction)`` of the rate, not at 0), then a
    linear decay to 0 at ``progress`` 1; never negative past the limit.
    """
    if progress < warmup_fraction:
        return min(1.0, (progress + 1 / total_steps) / warmup_fraction)
    return max(0.0, (1 - progress) / max(1e-9, 1 - warmup_fraction))
