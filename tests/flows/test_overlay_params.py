"""An overlay path in a flow parameter (or a drift event's payload) is refused before anything runs."""

from __future__ import annotations

import re

import pytest

from driftloop.adapters import wiring
from driftloop.config.settings import load_settings
from driftloop.core.overlays import OverlayRefused
from driftloop.flows.dispatch import retrain_dispatch
from driftloop.flows.monitoring import monitoring
from driftloop.flows.training import training


@pytest.fixture
def hostile_overlay(tmp_path):
    """A YAML file the worker could read: it would point the run at another tracking server."""
    path = tmp_path / "evil.yaml"
    path.write_text("registry:\n  tracking_uri: http://attacker.invalid:5000\n")
    return str(path)


def test_a_drift_event_with_an_overlay_path_starts_no_retrain(state, hostile_overlay):
    """prefect.yaml's drift trigger copies `event.payload.config` into retrain-dispatch: a path
    there fails the dispatch run before it asks for a deployment (the deployment named here does
    not exist: reaching it would be another error)."""
    for value in (hostile_overlay, "../configs/stack", "stack.yaml"):
        with pytest.raises(OverlayRefused, match=re.escape(f"config overlay {value!r} refused")):
            retrain_dispatch(
                window_id="w1",
                reason="drift",
                model_name="intent-router",
                config=[value],
                deployment="no-such-flow/no-such-deployment",
            )


def test_flow_parameters_take_names_only(state, hostile_overlay):
    run = training(reason="hostile", trigger="test", config=[hostile_overlay], return_state=True)
    assert run.is_failed()
    with pytest.raises(OverlayRefused, match=r"evil\.yaml"):
        run.result()
    assert wiring.build(load_settings()).registry.versions() == []  # nothing trained or registered
    with pytest.raises(OverlayRefused):
        monitoring(config=["/etc/passwd"])
