"""The one retry policy for calls to a server (MLflow, the S3 remote, PostgreSQL behind them):
back off for about a minute in all. Long enough to ride out a server restart (an MLflow server
takes 25-45 s to start on 2 busy cores), short enough that an outage fails the run (cleanly:
registration is the last step and is atomic) instead of hanging it.

What is retried (:func:`is_retryable`): a server that did not answer
(:class:`~driftloop.core.errors.ServerUnreachable`), a registry failure the server marked as
temporary (a :class:`~driftloop.core.errors.RegistryError` with ``transient``), and any error from
outside driftloop (a client library's own, a network blip). Every other driftloop error (bad input,
a refused promotion, a run that failed) is final: repeating the call gives the same answer.

Readiness waits (a server just started, given its own timeout) and poll loops (serving's model
poll, a rollout's watch) are not retries of a call and keep their own pacing.
"""

from __future__ import annotations

from driftloop.core.errors import DriftloopError, RegistryError, ServerUnreachable

# Seconds before each retry: 6 retries, 68 s in all.
SERVER_RETRY_DELAYS_S: tuple[int, ...] = (1, 2, 5, 10, 20, 30)


def server_retries() -> tuple[int, list[int]]:
    """(how many retries, the delay before each): the policy in the shape task runners take."""
    return len(SERVER_RETRY_DELAYS_S), list(SERVER_RETRY_DELAYS_S)


def is_retryable(exc: BaseException) -> bool:
    """Whether a server call that raised ``exc`` is worth repeating under the policy."""
    if isinstance(exc, ServerUnreachable):
        return True
    if isinstance(exc, RegistryError):
        return exc.transient
    return not isinstance(exc, DriftloopError)
