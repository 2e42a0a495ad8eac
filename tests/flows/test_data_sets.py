"""Two public data sets through one state folder, by configuration alone: each trains on its own."""

from __future__ import annotations

import pytest

from driftloop.adapters import wiring
from driftloop.config.settings import load_settings
from driftloop.data.dataset import DataError, read_labelled
from driftloop.flows.training import training


def test_switching_data_sets_back_and_forth_trains_each_on_its_own(state, tmp_path):
    """BANKING77 (base.yaml), then HWU64 (configs/hwu64.yaml), then BANKING77 again, one state dir."""
    outs, tags = [], []
    for overlay in ([], ["hwu64"], []):
        out = training(reason="switch", trigger="test", config=overlay)
        parts = wiring.build(load_settings(overlay))
        outs.append(out)
        tags.append(parts.registry.version_tags(out.candidate))
        prepared = parts.prepared()
        # the lineage names the data set, the key of its splits and its raw files
        assert tags[-1]["data.name"] == prepared.name and tags[-1]["data.key"] == prepared.key
        restored = parts.datasets.restore(tags[-1]["data.md5"], tmp_path / f"{len(outs)}.csv")
        labels = set(prepared.read("train")["label"])
        assert set(read_labelled(restored)["label"]) == labels  # trained on this data set's labels
    first, other, last = tags
    assert (first["data.name"], other["data.name"], last["data.name"]) == ("banking77", "hwu64", "banking77")
    assert other["data.key"] != first["data.key"]
    assert other["data.raw.train.sha256"] != first["data.raw.train.sha256"]
    # the same data gives the same training set and the same model, to the last digit
    for key in (
        "data.key",
        "data.md5",
        "data.raw.train.sha256",
        "data.raw.test.sha256",
        "eval.md5",
        "metric.accuracy",
        "metric.macro_f1",
    ):
        assert first[key] == last[key], key
    assert other["eval.md5"] != first["eval.md5"] and other["metric.accuracy"] != first["metric.accuracy"]
    assert outs[1].candidate.name == "hwu64-router" and outs[0].candidate.name == outs[2].candidate.name


def test_a_missing_raw_file_fails_the_run_even_with_old_splits(state, tmp_path, monkeypatch):
    """Splits prepared earlier are never a stand-in for a raw file that is gone."""
    training(reason="first", trigger="test")
    parts = wiring.build(load_settings())
    versions = len(parts.registry.versions())
    overlay = tmp_path / "gone.yaml"
    overlay.write_text(f"data:\n  train_path: {tmp_path / 'nonexistent.csv'}\n")
    monkeypatch.setenv("DRIFTLOOP_CONFIG", str(overlay))  # a file outside configs/: not a flow parameter
    run = training(reason="stale", trigger="test", return_state=True)
    assert run.is_failed()
    with pytest.raises(DataError, match=r"nonexistent\.csv: file not found \(data\.train_path\)"):
        run.result()
    assert len(parts.registry.versions()) == versions
