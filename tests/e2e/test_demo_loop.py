"""The whole demo scenario, over real HTTP and real flows, at a smaller scale: the loop closes."""

from __future__ import annotations

import pytest
from rich.console import Console

from tests.support import free_port

pytestmark = pytest.mark.slow


def test_loop_closes(state, monkeypatch):
    from driftloop.config.settings import load_settings
    from driftloop.entry.demo import run_demo
    from driftloop.ops.prefect_server import PrefectServer

    monkeypatch.setenv("DRIFTLOOP__SERVING__PORT", str(free_port()))
    monkeypatch.setenv("DRIFTLOOP__DEMO__QUIET_REQUESTS", "400")
    monkeypatch.setenv("DRIFTLOOP__DEMO__DRIFT_REQUESTS", "800")
    monkeypatch.setenv("DRIFTLOOP__DEMO__AFTER_REQUESTS", "400")
    settings = load_settings(["rollout"])  # what `make demo` runs: v2 reaches users by a rollout
    console = Console(record=True, width=120)
    from prefect.settings import PREFECT_API_URL

    try:
        out = run_demo(settings, ["rollout"], console, PrefectServer(PREFECT_API_URL.value(), None))
    except SystemExit:
        pytest.fail("the demo stopped early:\n" + console.export_text())

    text = console.export_text()
    print(text)  # shown with any failure below
    assert "no drift" in text  # the quiet phase stayed quiet
    assert out["v1"].decision.promote
    v2 = out["v2"]
    assert v2.decision.promote and v2.candidate.version == "2"
    assert v2.report.accuracy > out["v1"].report.accuracy
    acc = out["accuracy"].set_index("model_version")["accuracy"]
    assert acc["2"] > acc["1"] + 0.1  # accuracy on drifted traffic improved
    assert out["failed"] == 0  # no failed request, the rollout included
    # steady state: v2 is judged against its refreshed reference, and the new normal is not drift
    steady = out["steady"]
    assert steady.drift is not None and steady.champion.version == "2"
    assert not steady.drift.drift_detected and not steady.decision.retrain, steady.drift.summary()
    from driftloop.adapters.wiring import history_stores

    entries = history_stores(settings)[0].entries()
    moves = [e for e in entries if e.alias == "champion"]
    assert [(e.action, e.to_version) for e in moves] == [("promote", "1"), ("promote", "2")]
    # v2 went through every stage of the rollout before its promotion
    assert [e.action for e in entries if e.action.startswith("stage:")] == [
        "stage:shadow",
        "stage:canary-10",
        "stage:canary-50",
    ]
    assert out["v2"].rollout.result == "promoted", out["v2"].rollout.reason
    # the promotion of v2 names the drift that started it and the analysis that let it through
    assert "drift confirmed" in moves[1].reason and moves[1].report.endswith("-canary-50.md")


def test_the_loop_closes_on_a_second_data_set_by_configuration(state, monkeypatch):
    """HWU64 (configs/hwu64.yaml: another domain, label column `intent`, a small test split): the
    demo sizes its traffic to the data, the quiet window stays quiet, six withheld intents fire
    the monitor, and the retrained model answers the drifted traffic better."""
    from driftloop.config.settings import load_settings
    from driftloop.entry.demo import run_demo
    from driftloop.ops.prefect_server import PrefectServer

    monkeypatch.setenv("DRIFTLOOP__SERVING__PORT", str(free_port()))
    settings = load_settings(["hwu64"])
    console = Console(record=True, width=200)
    from prefect.settings import PREFECT_API_URL

    try:
        out = run_demo(settings, ["hwu64"], console, PrefectServer(PREFECT_API_URL.value(), None))
    except SystemExit:
        pytest.fail("the demo stopped early:\n" + console.export_text())
    text = console.export_text()
    print(text)
    assert "data set hwu64" in text and "traffic scaled to the data set's pools" in text
    assert "no drift" in text  # quiet
    assert out["drift"].drift_detected  # six new intents fire
    v1, v2 = out["v1"], out["v2"]
    assert v1.candidate.name == "hwu64-router" and v2.decision.promote and v2.candidate.version == "2"
    assert v2.report.accuracy > v1.report.accuracy
    acc = out["accuracy"].set_index("model_version")["accuracy"]
    assert acc["2"] > acc["1"] + 0.05, acc  # live accuracy recovers
    assert out["failed"] == 0
    assert not out["steady"].decision.retrain, out["steady"].decision.reason
