"""The one retry policy for calls to a server (MLflow, the S3 remote, PostgreSQL behind them):
back off for about a minute in all. Long enough to ride out a server restart (an MLflow server
takes 25-45 s to start on 2 busy cores), short enough that an outage fails the run (cleanly:
registration is the last step and is atomic) instead of hanging it.

Readiness waits (a server just started, given its own timeout) and poll loops (serving's model
poll, a rollout's watch) are not retries of a call and keep their own pacing.
"""

from __future__ import annotations

# Seconds before each retry: 6 retries, 68 s in all.
SERVER_RETRY_DELAYS_S: tuple[int, ...] = (1, 2, 5, 10, 20, 30)


def server_retries() -> tuple[int, list[int]]:
    """(how many retries, the delay before each): the policy in the shape task runners take."""
    return len(SERVER_RETRY_DELAYS_S), list(SERVER_RETRY_DELAYS_S)
