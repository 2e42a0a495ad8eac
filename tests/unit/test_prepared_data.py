"""Prepared splits are keyed by what made them; the simulated traffic fits the data set's pools."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from driftloop.config.settings import DataSettings
from driftloop.data import dataset
from driftloop.data.dataset import DataError, ensure_prepared
from driftloop.ops import simulator


def write_set(folder, labels, per_label, prefix, label_field="label"):
    """A labelled CSV whose texts carry ``prefix``, so a test can tell which file a split came from."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        {"text": f"{prefix} {label} question number {i}", label_field: label}
        for label in labels
        for i in range(per_label)
    ]
    train, test = folder / "train.csv", folder / "test.csv"
    pd.DataFrame(rows).to_csv(train, index=False)
    test_rows = [{"text": f"{prefix} {label} held out {i}", label_field: label} for label in labels for i in range(20)]
    pd.DataFrame(test_rows).to_csv(test, index=False)
    return train, test


@pytest.fixture
def two_sets(tmp_path):
    a_train, a_test = write_set(tmp_path / "a", ["alpha", "beta", "gamma"], 10, "apples")
    b_train, b_test = write_set(tmp_path / "b", ["one", "two", "three", "four"], 10, "bananas", "intent")
    a = DataSettings(name="a", train_path=a_train, test_path=a_test, new_labels=("gamma",))
    b = DataSettings(name="b", train_path=b_train, test_path=b_test, label_field="intent", new_labels=("four",))
    return a, b


def test_each_data_set_gets_its_own_splits_back_and_forth(tmp_path, two_sets):
    a, b = two_sets
    root = tmp_path / "prepared"
    first = ensure_prepared(a, root)
    other = ensure_prepared(b, root)
    again = ensure_prepared(a, root)
    assert first.key != other.key and first.dir != other.dir
    assert again == first
    assert set(first.read("train")["label"]) == {"alpha", "beta"}
    assert set(other.read("train")["label"]) == {"one", "two", "three"}
    assert other.read("eval")["text"].str.startswith("bananas").all()
    assert json.loads(first["labels"].read_text()) == ["alpha", "beta", "gamma"]
    lineage = other.lineage()
    assert lineage["data.name"] == "b" and lineage["data.key"] == other.key
    assert lineage["data.raw.train.sha256"] == dataset.file_sha256(b.train_path)


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 7},
        {"eval_fraction": 0.3},
        {"reference_fraction": 0.2},
        {"new_labels": ("beta",)},
    ],
)
def test_a_setting_that_shapes_the_splits_changes_the_key(tmp_path, two_sets, change):
    a, _ = two_sets
    before = ensure_prepared(a, tmp_path)
    after = ensure_prepared(a.model_copy(update=change), tmp_path)
    assert after.key != before.key and after.dir.exists() and before.dir.exists()


def test_the_name_alone_does_not_change_the_key(tmp_path, two_sets):
    a, _ = two_sets
    assert ensure_prepared(a, tmp_path).key == ensure_prepared(a.model_copy(update={"name": "renamed"}), tmp_path).key


def test_an_edited_raw_file_is_prepared_again(tmp_path, two_sets):
    a, _ = two_sets
    before = ensure_prepared(a, tmp_path / "p")
    frame = pd.read_csv(a.train_path)
    frame.loc[0, "text"] = "apples a brand new question"
    frame.to_csv(a.train_path, index=False)
    after = ensure_prepared(a, tmp_path / "p")
    assert after.key != before.key
    assert "apples a brand new question" in set(after.read("train")["text"])
    assert "apples a brand new question" not in set(before.read("train")["text"])


def test_a_missing_raw_file_is_an_error_even_with_old_splits(tmp_path, two_sets):
    a, _ = two_sets
    ensure_prepared(a, tmp_path)
    os.remove(a.train_path)
    with pytest.raises(DataError, match=f"{a.train_path}: file not found \\(data.train_path\\)"):
        ensure_prepared(a, tmp_path)
    with pytest.raises(DataError, match=r"data\.test_path is not set"):
        ensure_prepared(DataSettings(train_path=a.test_path), tmp_path)


def test_an_unfinished_build_is_never_reused(tmp_path, two_sets):
    a, _ = two_sets
    done = ensure_prepared(a, tmp_path)
    # a crash after the splits but before the manifest: the folder looks full but is not finished
    (done.dir / dataset.MANIFEST).unlink()
    (done.dir / "train.csv").write_text("text,label\nhalf written,alpha\n")
    rebuilt = ensure_prepared(a, tmp_path)
    assert rebuilt.dir == done.dir and len(rebuilt.read("train")) == 20
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("text,label\n", "no rows"),
        ('text,label\n"never closed,alpha\n', "cannot parse"),
        ("words,label\nhello,alpha\n", r"missing field\(s\) \['text'\]"),
    ],
)
def test_bad_raw_files_name_the_file(tmp_path, two_sets, content, message):
    a, _ = two_sets
    bad = tmp_path / "bad.csv"
    bad.write_text(content)
    with pytest.raises(DataError, match=f"{bad}: .*{message}"):
        ensure_prepared(a.model_copy(update={"train_path": bad}), tmp_path / "p")


def test_the_require_same_data_guard(tmp_path, two_sets):
    a, b = two_sets
    prepared = ensure_prepared(a, tmp_path)
    dataset.require_same_data(prepared, prepared.lineage(), "v1")
    dataset.require_same_data(prepared, {}, "v1")  # registered before the tag existed
    other = ensure_prepared(b, tmp_path)
    with pytest.raises(DataError, match=f"v3 was trained on data set 'b' \\(data key {other.key}\\)"):
        dataset.require_same_data(prepared, other.lineage(), "v3")


def test_traffic_as_configured_when_the_pools_hold_it():
    plan = simulator.plan_traffic(400, 800, 400, 0.35, known_pool=798, new_pool=1279, min_window=150)
    assert plan == simulator.TrafficPlan(400, 800, 400, scaled=False)


@pytest.mark.parametrize(
    ("known", "new", "share"), [(353, 1128, 0.35), (500, 90, 0.35), (300, 300, 0.9), (777, 5, 0.0)]
)
def test_traffic_scales_to_small_pools_and_never_asks_for_more_than_they_hold(known, new, share):
    plan = simulator.plan_traffic(400, 800, 400, share, known_pool=known, new_pool=new, min_window=50)
    assert plan.scaled
    known_frame = pd.DataFrame({"text": [f"k{i}" for i in range(known)], "label": "k"})
    new_frame = pd.DataFrame({"text": [f"n{i}" for i in range(new)], "label": "n"})
    quiet = simulator.mix(known_frame, new_frame, plan.quiet, 0.0, 1)
    drift = simulator.mix(known_frame, new_frame, plan.drift, share, 2)
    rest_known = known_frame[~known_frame["text"].isin(drift["text"])]
    rest_new = new_frame[~new_frame["text"].isin(drift["text"])]
    after = simulator.mix(rest_known, rest_new, plan.after, share, 3)
    assert len(quiet) == plan.quiet and len(after) == plan.after
    # scaled down only as far as the tighter pool needs: nearly all of it is used
    used_known = (len(drift) + len(after)) - (drift["label"].eq("n").sum() + after["label"].eq("n").sum())
    used_new = len(drift) + len(after) - used_known
    assert used_known >= 0.97 * known - 2 or used_new >= 0.97 * new - 2
    assert plan.after * 2 >= plan.drift - 2  # the configured 2:1 ratio of the later phases is kept


def test_traffic_too_small_for_a_window_says_what_is_missing():
    with pytest.raises(DataError, match=r"120 known-label and 40 new-label texts.*quiet phase 120 < 150"):
        simulator.plan_traffic(400, 800, 400, 0.35, known_pool=120, new_pool=40, min_window=150)
