"""Real flows under Prefect's test harness, real MLflow on SQLite in a temp folder."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def state(tmp_path_factory, monkeypatch, prefect_harness):
    """A fresh driftloop state dir for one test (registry, logs, data versions, history)."""
    path = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("DRIFTLOOP__PROJECT__STATE_DIR", str(path))
    return path


@pytest.fixture
def settings(state):
    from driftloop.settings import load_settings

    return load_settings()
