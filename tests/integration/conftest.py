"""Fixtures for the integration tests: one real MLflow registry on SQLite for the session (the
servers and tiny data they use are in tests/support)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory) -> str:
    """One MLflow SQLite store for the session; each test module registers its own model name."""
    root = tmp_path_factory.mktemp("mlflow")
    return f"sqlite:///{root}/mlflow.db"


@pytest.fixture(scope="session")
def artifact_root(tracking_uri, tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mlartifacts")
