import pandas as pd
import pytest

from driftloop.data.validation import ValidationError, require_valid, validate_training_set

LABELS = ["a", "b"]


def frame(rows):
    return pd.DataFrame(rows, columns=["text", "label"])


def checks(report):
    return {i.check: i.rows for i in report.issues}


def test_clean_batch_passes():
    r = validate_training_set(frame([("hello there", "a"), ("bye now", "b")]), source="t.csv", known_labels=LABELS)
    assert r.ok and require_valid(r) is r


def test_missing_column_is_a_schema_error():
    r = validate_training_set(pd.DataFrame({"text": ["x"]}), source="t.csv")
    assert checks(r) == {"schema": ()} and "label" in r.summary()


def test_empty_frame():
    assert "schema" in checks(validate_training_set(frame([]), source="t.csv"))


def test_each_problem_names_its_rows():
    r = validate_training_set(
        frame(
            [
                ("fine text", "a"),  # 0
                ("   ", "a"),  # 1 empty
                ("what", "zzz"),  # 2 unknown label
                ("Fine   TEXT", "a"),  # 3 duplicate of 0 (case/space-insensitive)
                ("from eval", "b"),  # 4 overlaps eval
                ("no label", ""),  # 5 empty label
            ]
        ),
        source="batch.csv",
        known_labels=LABELS,
        eval_texts=["FROM eval"],
    )
    got = checks(r)
    assert got["empty_text"] == (1,)
    assert got["unknown_label"] == (2,)
    assert got["duplicate"] == (3,)
    assert got["eval_overlap"] == (4,)
    assert got["empty_label"] == (5,)
    with pytest.raises(ValidationError) as err:
        require_valid(r)
    assert "batch.csv" in str(err.value) and "rows [2]" in str(err.value)


def test_too_long_and_too_few():
    r = validate_training_set(
        frame([("x" * 11, "a"), ("ok", "b"), ("ok2", "b")]), source="t", max_text_chars=10, min_rows_per_label=2
    )
    got = checks(r)
    assert got["text_too_long"] == (0,)
    assert got["too_few_rows"] == (0,)
