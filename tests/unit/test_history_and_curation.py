import pandas as pd
import pytest

from driftloop.adapters.history import FileChampionHistory, FileTriggerLedger
from driftloop.core.types import HistoryEntry
from driftloop.data import curation
from tests.support.history import RACES, slow_check


def move(frm, to, action="promote", alias="champion"):
    return HistoryEntry("t", "m", alias, frm, to, action, "r", "a")


def test_history_is_append_only_and_skips_torn_line(tmp_path):
    h = FileChampionHistory(tmp_path / "h.jsonl")
    h.append(move(None, "1"))
    h.append(move("1", "2"))
    with open(h.path, "a") as f:
        f.write('{"time": "t", "mod')  # a crash mid-write
    assert [e.to_version for e in h.entries()] == ["1", "2"]


def test_last_good_skips_current_and_rolled_back_versions(tmp_path):
    h = FileChampionHistory(tmp_path / "h.jsonl")
    for e in [
        move(None, "1"),
        move("1", "2"),
        move("2", "1", action="rollback"),
        move("1", "3"),
        move(None, "3", alias="challenger"),
    ]:
        h.append(e)
    assert h.last_good(exclude="3") == "1"  # 2 was rolled back from: never a target again
    assert h.last_good(exclude="1") == "3"
    assert FileChampionHistory(tmp_path / "none.jsonl").last_good() is None


def test_ledger_round_trip_records_a_window_once(tmp_path):
    ledger = FileTriggerLedger(tmp_path / "l.jsonl")
    assert ledger.record("w1", "drift")
    assert not ledger.record("w1", "drift again"), "a window is recorded once"
    assert [r.window_id for r in ledger.records()] == ["w1"]
    assert ledger.records()[0].time.tzinfo is not None


def test_a_claim_records_the_window_only_when_the_check_says_retrain(tmp_path):
    ledger = FileTriggerLedger(tmp_path / "l.jsonl")
    first = ledger.claim_window("w1", slow_check("w1", pause_s=0), run="run-1")
    assert first.retrain and "drift confirmed" in first.reason
    again = ledger.claim_window("w1", slow_check("w1", pause_s=0), run="run-2")
    assert not again.retrain and "already triggered" in again.reason
    other = ledger.claim_window("w2", slow_check("w2", pause_s=0), run="run-3")
    assert not other.retrain and "cooldown" in other.reason
    assert [r.window_id for r in ledger.records()] == ["w1"]
    # what was recorded: the decision's reason and the run that claimed it
    assert '"run": "run-1"' in ledger.path.read_text() and "drift confirmed" in ledger.path.read_text()


@pytest.mark.parametrize("race", RACES, ids=lambda r: r.__name__)
def test_monitors_racing_on_one_window_retrain_once(tmp_path, race):
    path = tmp_path / "l.jsonl"
    decisions = race(lambda: FileTriggerLedger(path), ["w1"] * 6)
    assert sum(d.retrain for d in decisions) == 1, decisions
    assert all("already triggered" in d.reason for d in decisions if not d.retrain), decisions
    assert [r.window_id for r in FileTriggerLedger(path).records()] == ["w1"]


@pytest.mark.parametrize("race", RACES, ids=lambda r: r.__name__)
def test_monitors_racing_on_two_windows_keep_the_cooldown(tmp_path, race):
    path = tmp_path / "l.jsonl"
    decisions = race(lambda: FileTriggerLedger(path), ["w1", "w2"] * 3)
    assert sum(d.retrain for d in decisions) == 1, decisions
    assert len(FileTriggerLedger(path).records()) == 1


def preds(rows):
    return pd.DataFrame(rows, columns=["request_id", "time", "text", "intent", "model_version"])


def test_window_keeps_newest_distinct_texts_of_the_champion():
    p = preds(
        [
            ("a", "2026-01-01T00:00:01", "Hello  there", "x", "1"),
            ("b", "2026-01-01T00:00:02", "hello there", "x", "1"),  # same text: keep the newest only
            ("c", "2026-01-01T00:00:03", "other", "y", "2"),  # another model's answer
            ("d", "2026-01-01T00:00:04", "third", "y", "1"),
        ]
    )
    w = curation.select_window(p, "1", size=10)
    assert list(w["request_id"]) == ["b", "d"]
    assert list(curation.select_window(p, "1", size=1)["request_id"]) == ["d"]


def test_labelled_rows_last_label_wins_and_quarantines_unknown():
    p = preds([("a", "t", "text a", "x", "1"), ("b", "t", "text b", "x", "1")])
    fb = pd.DataFrame(
        [("a", "2026-01-01T00:00:01", "x"), ("a", "2026-01-01T00:00:02", "y"), ("b", "2026-01-01T00:00:01", "bogus")],
        columns=["request_id", "time", "label"],
    )
    out = curation.labelled_rows(p, fb, ["x", "y"])
    assert out.rows.to_dict("records") == [{"text": "text a", "label": "y"}]
    assert list(out.quarantined["label"]) == ["bogus"]


def test_merge_adds_only_new_rows_and_never_eval_texts():
    prev = pd.DataFrame({"text": ["one", "two"], "label": ["a", "b"]})
    lab = pd.DataFrame({"text": ["ONE", "three", "in eval"], "label": ["a", "c", "c"]})
    merged = curation.merge_training_set(prev, lab, ["In Eval"])
    assert merged["text"].tolist() == ["one", "two", "three"]


def test_production_reference_is_unseen_recent_texts():
    window = pd.DataFrame({"text": ["trained one", "fresh a", "FRESH  a", "eval text", "fresh b"]})
    ref = curation.production_reference(window, ["Trained one"], ["eval text"])
    assert ref["text"].tolist() == ["fresh a", "fresh b"] and set(ref["label"]) == {""}
    assert curation.production_reference(window.iloc[:0], [], []).empty
