"""Model selection's pure parts: the grid, the folds, the choice and the settings' checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from driftloop.config.settings import ModelSettings, load_settings
from driftloop.models.selection import (
    Candidate,
    CandidateScore,
    choose,
    expand_grid,
    fold_ids,
    pick_best,
    score_candidate,
)

BASE = ModelSettings(family="tfidf", params={"C": 0.5, "word_ngrams": [1, 2], "char_min_df": 2})


def test_empty_grid_is_the_base_settings_alone():
    assert expand_grid(BASE, {}) == [Candidate(0, {}, BASE)]


def test_grid_is_every_combination_in_key_order_last_key_fastest():
    candidates = expand_grid(BASE, {"C": [0.25, 1.0], "word_ngrams": [[1, 1], [1, 3]], "char_min_df": [1]})
    assert [c.index for c in candidates] == [0, 1, 2, 3]
    assert [(c.model.params["C"], c.model.params["word_ngrams"]) for c in candidates] == [
        (0.25, [1, 1]),
        (0.25, [1, 3]),
        (1.0, [1, 1]),
        (1.0, [1, 3]),
    ]
    # parameters outside the grid keep the base value; the base itself is untouched
    assert all(c.model.params["char_min_df"] == 1 for c in candidates)
    assert BASE.params == {"C": 0.5, "word_ngrams": [1, 2], "char_min_df": 2}
    assert candidates[1].name == "c1" and candidates[1].describe() == "C=0.25 word_ngrams=[1, 3] char_min_df=1"


def test_family_key_replaces_the_family_not_a_parameter():
    [only] = expand_grid(BASE, {"family": ["other"]})
    assert only.model.family == "other" and "family" not in only.model.params


def _score(index: int, folds: tuple[float, ...], metric: str = "accuracy") -> CandidateScore:
    model = ModelSettings(family=BASE.family, params={**BASE.params, "C": index})
    return CandidateScore(Candidate(index, {"C": index}, model), metric, folds, fit_s=1.0)


def test_best_mean_wins():
    scores = [_score(0, (0.8, 0.8)), _score(1, (0.9, 0.85)), _score(2, (0.7, 0.95))]
    assert pick_best(scores).candidate.index == 1


def test_tie_goes_to_the_earlier_candidate_whatever_the_finishing_order():
    # mean(0.1, 0.2, 0.3) is 0.2 plus one unit in the last place: still a tie with 0.2
    tied = [_score(2, (0.1, 0.2, 0.3)), _score(1, (0.2,)), _score(0, (0.1, 0.1, 0.1))]
    assert tied[0].score > tied[1].score
    assert pick_best(tied).candidate.index == 1
    assert pick_best(list(reversed(tied))).candidate.index == 1


def test_choose_orders_by_grid_and_records_the_choice():
    result = choose([_score(1, (0.9,)), _score(0, (0.8,))], folds=1, runner="dask", scheduler="tcp://127.0.0.1:1234")
    assert [s.candidate.index for s in result.scores] == [0, 1]
    assert result.model.params["C"] == 1
    tags = result.tags()
    assert tags["selection.candidate"] == "c1" and json.loads(tags["selection.overrides"]) == {"C": 1}
    assert tags["selection.runner"] == "dask tcp://127.0.0.1:1234" and tags["selection.score"] == "0.900000"
    assert [row["chosen"] for row in result.table()] == ["", "yes"]


def test_no_candidates_or_mixed_metrics_refused():
    with pytest.raises(ValueError, match="no candidates"):
        pick_best([])
    with pytest.raises(ValueError, match="different metrics"):
        choose([_score(0, (0.5,)), _score(1, (0.5,), metric="macro_f1")], folds=1, runner="sequential")


def test_folds_are_stratified_seeded_and_cover_every_row():
    labels = ["a"] * 9 + ["b"] * 6 + ["c"] * 2
    ids = fold_ids(labels, 3, seed=1)
    assert np.array_equal(ids, fold_ids(labels, 3, seed=1))
    assert not np.array_equal(ids, fold_ids(labels, 3, seed=2))
    arr = np.array(labels)
    for k in range(3):
        assert (ids[arr == "a"] == k).sum() == 3 and (ids[arr == "b"] == k).sum() == 2
    # a label with fewer rows than folds does not always start in fold 0
    assert set(ids[arr == "c"]) != {0} or set(ids[arr == "b"]) != {0}


def test_score_is_deterministic_and_uses_only_the_given_rows(tiny_frame):
    [cand] = expand_grid(BASE, {"C": [0.5]})
    first = score_candidate(tiny_frame, cand, folds=3, metric="accuracy", seed=42)
    again = score_candidate(tiny_frame, cand, folds=3, metric="accuracy", seed=42)
    assert len(first.fold_scores) == 3 and first.fold_scores == again.fold_scores
    assert 0.3 < first.score <= 1.0


def test_one_fold_scores_one_stratified_holdout(tiny_frame):
    cand = expand_grid(ModelSettings(family="tfidf", params={"char_min_df": 1}), {})[0]
    score = score_candidate(tiny_frame, cand, folds=1, metric="accuracy", seed=42, validation_fraction=0.25)
    assert len(score.fold_scores) == 1 and 0.3 < score.score <= 1.0
    # the holdout is fold 0 of round(1 / 0.25) = 4 stratified folds: a quarter of every label
    held = fold_ids(tiny_frame["label"].tolist(), 4, 42) == 0
    assert tiny_frame[held].groupby("label").size().eq(3).all()


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"DRIFTLOOP__SELECTION__GRID": '{"Cc": [0.5, 1.0]}'}, "selection.grid.Cc"),
        ({"DRIFTLOOP__SELECTION__GRID": '{"C": []}'}, "selection.grid.C"),
        ({"DRIFTLOOP__SELECTION__GRID": '{"C": [1, 1]}'}, "selection.grid.C"),
        ({"DRIFTLOOP__SELECTION__RUNNER": "ray"}, "selection.runner"),
        ({"DRIFTLOOP__SELECTION__FOLDS": "0"}, "selection.folds"),
        ({"DRIFTLOOP__SELECTION__VALIDATION_FRACTION": "0.9"}, "selection.validation_fraction"),
        ({"DRIFTLOOP__SELECTION__METRIC": "auc"}, "selection.metric"),
        ({"DRIFTLOOP__SELECTION__DASK__ADDRESS": "scheduler:8786"}, "selection.dask.address"),
        ({"DRIFTLOOP__SELECTION__DASK__N_WORKERS": "0"}, "selection.dask.n_workers"),
        ({"DRIFTLOOP__SELECTION__DASK__PORT": "1"}, "selection.dask.port"),
    ],
)
def test_bad_selection_settings_name_the_key(monkeypatch, env, key):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValidationError) as err:
        load_settings()
    assert key in str(err.value)


def test_default_is_no_search_and_a_grid_loads(monkeypatch):
    assert load_settings().selection.grid == {}
    monkeypatch.setenv("DRIFTLOOP__SELECTION__GRID", '{"C": [0.25, 0.5], "char_ngrams": [[2, 4], [2, 5]]}')
    monkeypatch.setenv("DRIFTLOOP__SELECTION__RUNNER", "dask")
    monkeypatch.setenv("DRIFTLOOP__SELECTION__DASK__ADDRESS", "tcp://10.0.0.5:8786")
    s = load_settings()
    assert len(expand_grid(s.model, s.selection.grid)) == 4
    assert s.selection.dask.address == "tcp://10.0.0.5:8786"
