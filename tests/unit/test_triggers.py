"""Retrain triggers: deterministic ids per window, and a person's --param flags."""

from __future__ import annotations

import pytest

from driftloop.core.triggers import DriftEvent, drift_event_id, parse_params, retrain_idempotency_key


def test_the_same_window_gives_the_same_event_id_and_key():
    assert drift_event_id("m", "w1") == drift_event_id("m", "w1") == DriftEvent("m", "w1", "any").id
    assert drift_event_id("m", "w1") != drift_event_id("m", "w2")
    assert drift_event_id("m", "w1") != drift_event_id("other", "w1")
    assert retrain_idempotency_key("m", "w1") == "retrain:m:w1" != retrain_idempotency_key("m", "w2")


def test_event_payload_carries_what_the_retrain_needs():
    event = DriftEvent("m", "abc", "drift", "file:///r.html", "3", "run-1", ("stack",))
    assert event.resource_id == "driftloop.model.m"
    assert event.payload() == {
        "window_id": "abc",
        "window_hash": "abc",
        "reason": "drift",
        "report": "file:///r.html",
        "champion_version": "3",
        "monitor_run": "run-1",
        "config": ["stack"],
    }


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("min_new_labels=0", 0),
        ("roll_out=false", False),
        ("window_id=w-1", "w-1"),
        ('config=["stack"]', ["stack"]),
        ("report=", ""),
        ("window_id=a=b", "a=b"),
    ],
)
def test_values_are_json_when_they_parse_else_strings(flag, value):
    name = flag.partition("=")[0]
    assert parse_params([flag], ["min_new_labels", "roll_out", "window_id", "config", "report"]) == {name: value}


@pytest.mark.parametrize(
    ("flag", "named"), [("min_new_label=0", "min_new_label"), ("noequals", "noequals"), ("=3", "=3")]
)
def test_unknown_or_malformed_parameters_are_named(flag, named):
    with pytest.raises(ValueError, match=named):
        parse_params([flag], ["min_new_labels"])
