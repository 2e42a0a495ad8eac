"""The one retry policy for server calls: what it repeats, and that every server-calling task
takes it with its retry condition."""

from __future__ import annotations

import pytest
from prefect.exceptions import ObjectNotFound
from prefect.states import Failed

from driftloop.core.errors import InputError, RegistryError, RunFailed, ServerUnreachable
from driftloop.core.retry import SERVER_RETRY_DELAYS_S, is_retryable
from driftloop.data.dataset import DataError
from driftloop.tasks import data, dispatch, model, monitor, retrain, retry_server_call, rollout

CASES = [
    (ServerUnreachable("cannot reach x", url="http://x"), True),
    (RegistryError("MLflow at x: 503", url="http://x", transient=True), True),
    (RegistryError("MLflow at x: 403", url="http://x"), False),
    (InputError("bad option"), False),
    (RunFailed("no challenger to promote"), False),
    (DataError("row 3: no label"), False),
    (ConnectionResetError("reset by peer"), True),
    (OSError("a blip"), True),
]


@pytest.mark.parametrize(("exc", "retry"), CASES, ids=[f"{type(e).__name__}-{r}" for e, r in CASES])
def test_driftloop_errors_are_final_except_what_a_retry_can_fix(exc, retry):
    assert is_retryable(exc) is retry


@pytest.mark.parametrize(("exc", "retry"), CASES, ids=[f"{type(e).__name__}-{r}" for e, r in CASES])
def test_the_task_condition_reads_the_failed_states_exception(exc, retry):
    assert retry_server_call(None, None, Failed(data=exc)) is retry


def test_a_missing_prefect_object_is_final():
    assert retry_server_call(None, None, Failed(data=ObjectNotFound(http_exc=Exception("404")))) is False


SERVER_TASKS = [
    data.commit_dataset,
    data.restore_dataset,
    model.load_model,
    model.champion_ref,
    model.register_model,
    model.move_alias,
    model.version_tags,
    model.clear_alias,
    monitor.publish_drift,
    retrain.publish_retrain,
    rollout.enter_step,
    rollout.promote,
    rollout.withdraw,
    rollout.rollback_champion,
    rollout.record_outcome,
    dispatch.run_retrain_deployment,
]


@pytest.mark.parametrize("task", SERVER_TASKS, ids=[t.name for t in SERVER_TASKS])
def test_every_server_calling_task_takes_the_one_policy(task):
    assert task.retries == len(SERVER_RETRY_DELAYS_S)
    assert list(task.retry_delay_seconds) == list(SERVER_RETRY_DELAYS_S)
    assert task.retry_condition_fn is retry_server_call
