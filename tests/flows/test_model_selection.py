"""Model selection inside the training flow: the same choice and the same scores whether the
candidates are scored one after another in process or in parallel on a real Dask cluster."""

from __future__ import annotations

import ipaddress
import json
import os
from datetime import UTC, datetime
from urllib.parse import urlparse

import pytest

from driftloop.adapters import wiring
from driftloop.config.settings import load_settings
from driftloop.flows.training import training
from tests.support.flows import artifacts

GRID = {"C": [0.01, 0.5], "char_ngrams": [[1, 2], [2, 5]]}


def _loopback(address: str) -> bool:
    return ipaddress.ip_address(urlparse(address).hostname).is_loopback


@pytest.fixture
def small_data(state, tmp_path, banking_train):
    """8 similar card intents, 30 training rows each: four candidates x 3 folds fit in seconds,
    and the candidates do not all score the same."""
    labels = sorted(label for label in banking_train["label"].unique() if label.startswith("card"))[:8]
    rows = banking_train[banking_train["label"].isin(labels)].groupby("label").head(45)
    rows = rows.sample(frac=1.0, random_state=0)
    train = rows.groupby("label").head(30)
    test = rows.drop(train.index)
    train.rename(columns={"label": "category"}).to_csv(tmp_path / "train.csv", index=False)
    test.rename(columns={"label": "category"}).to_csv(tmp_path / "test.csv", index=False)
    overlay = tmp_path / "small.yaml"
    overlay.write_text(
        f"data:\n  train_path: {tmp_path / 'train.csv'}\n  test_path: {tmp_path / 'test.csv'}\n"
        f"  new_labels: [{labels[0]}]\n"
    )
    return str(overlay)


@pytest.fixture
def search(tmp_path):
    overlay = tmp_path / "search.yaml"
    overlay.write_text(f"selection:\n  grid: {json.dumps(GRID)}\n  folds: 3\n")
    return str(overlay)


def test_sequential_and_dask_choose_the_same_candidate(small_data, search, monkeypatch):
    started = datetime.now(UTC)
    # Overlay files outside configs/ reach an in-process flow through DRIFTLOOP_CONFIG (a flow's
    # `config` parameter takes names only).
    monkeypatch.setenv("DRIFTLOOP_CONFIG", f"{small_data},{search}")
    sequential = training(reason="select in process", trigger="test")
    monkeypatch.setenv("DRIFTLOOP__SELECTION__RUNNER", "dask")
    monkeypatch.setenv("DRIFTLOOP__SELECTION__DASK__N_WORKERS", "2")
    on_dask = training(reason="select on dask", trigger="test")

    seq, dask = sequential.selection, on_dask.selection
    assert seq is not None and dask is not None
    assert len(seq.scores) == len(dask.scores) == 4
    # identical numbers, fold by fold, and therefore the same choice
    assert [s.fold_scores for s in seq.scores] == [s.fold_scores for s in dask.scores]
    assert seq.chosen.candidate == dask.chosen.candidate
    # the grid is not flat on this data, so the choice is a real one
    assert len({s.score for s in seq.scores}) > 1

    # where the work ran: this process, then two Dask worker processes, all on loopback
    assert seq.runner == "sequential" and seq.scheduler is None
    assert {s.worker for s in seq.scores} == {f"pid {os.getpid()}"}
    assert dask.runner == "dask" and _loopback(dask.scheduler)
    workers = {s.worker for s in dask.scores}
    assert len(workers) == 2 and all(w.startswith("tcp://") and _loopback(w) for w in workers)

    # the registered versions carry the choice, and the model was trained with it
    parts = wiring.build(load_settings([small_data]))
    chosen = dask.chosen.candidate
    for out in (sequential, on_dask):
        tags = parts.registry.version_tags(out.candidate)
        assert tags["selection.candidate"] == chosen.name
        assert json.loads(tags["selection.overrides"]) == chosen.overrides
        assert tags["selection.score"] == f"{dask.chosen.score:.6f}" and tags["selection.folds"] == "3"
    assert parts.registry.version_tags(on_dask.candidate)["selection.runner"] == f"dask {dask.scheduler}"
    model = parts.registry.load(on_dask.candidate)
    assert model.vectorizers[1].ngram_range == tuple(chosen.overrides["char_ngrams"])

    # every candidate's score is listed in the flow's table artifact
    # (this test's two: other tests of the session run selections on the same Prefect server)
    tables = [a for a in artifacts("model-selection") if a.created >= started]
    assert len(tables) == 2
    for table in tables:
        rows = json.loads(table.data) if isinstance(table.data, str) else table.data
        assert [r["candidate"] for r in rows] == ["c0", "c1", "c2", "c3"]
        assert [r["chosen"] for r in rows].count("yes") == 1


def test_no_grid_runs_no_selection(small_data, monkeypatch):
    monkeypatch.setenv("DRIFTLOOP_CONFIG", small_data)
    out = training(reason="no search", trigger="test")
    assert out.selection is None
    tags = wiring.build(load_settings([small_data])).registry.version_tags(out.candidate)
    assert not any(k.startswith("selection.") for k in tags)


def test_task_runner_follows_the_settings():
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    from driftloop.config.settings import SelectionSettings
    from driftloop.flows.selection import task_runner

    sequential = task_runner(SelectionSettings())
    assert isinstance(sequential, ThreadPoolTaskRunner) and sequential._max_workers == 1
    local = task_runner(SelectionSettings(runner="dask", dask={"n_workers": 3}))
    assert isinstance(local, DaskTaskRunner) and local.address is None
    kwargs = local.cluster_kwargs
    assert kwargs["host"] == "127.0.0.1" and kwargs["dashboard_address"].startswith("127.0.0.1:")
    assert (kwargs["n_workers"], kwargs["threads_per_worker"], kwargs["processes"]) == (3, 1, True)
    remote = task_runner(SelectionSettings(runner="dask", dask={"address": "tcp://10.1.2.3:8786"}))
    assert remote.address == "tcp://10.1.2.3:8786" and not remote.cluster_kwargs
