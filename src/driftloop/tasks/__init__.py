"""Thin Prefect tasks over the driftloop library.

Every task that calls a server (MLflow, the S3 remote, the Prefect API) takes
:data:`SERVER_RETRIES`: the one retry policy of :mod:`driftloop.core.retry`, with
:func:`retry_server_call` as its condition, so driftloop's own errors (bad input, a refused
promotion) end the task at once and only what a retry can fix is repeated.
"""

from __future__ import annotations

from typing import Any

from prefect.client.schemas.objects import State, TaskRun
from prefect.exceptions import ObjectNotFound

from driftloop.core.retry import is_retryable, server_retries


def retry_server_call(task: Any, task_run: TaskRun, state: State) -> bool:
    """Prefect's ``retry_condition_fn``: retry the failed run only when its exception is worth
    repeating (:func:`driftloop.core.retry.is_retryable`). The Prefect API's "no such object" (a
    deployment name that does not exist) is final too."""
    exc = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    if not isinstance(exc, BaseException):
        return True
    return not isinstance(exc, ObjectNotFound) and is_retryable(exc)


# Tasks that talk to a server retry with back-off for about a minute: the one policy,
# driftloop.core.retry (why about a minute is there).
_RETRIES, _DELAYS = server_retries()
SERVER_RETRIES: dict[str, Any] = {
    "retries": _RETRIES,
    "retry_delay_seconds": _DELAYS,
    "retry_condition_fn": retry_server_call,
}
