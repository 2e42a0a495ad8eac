"""Serving's pure parts: request parsing, request ids, and the model holder on a fake source
(the HTTP behaviour is in tests/integration/test_serving.py)."""

from __future__ import annotations

import json
import uuid

import pytest

from driftloop.config.settings import ServingSettings
from driftloop.core.types import MonitorStatus, RolloutState
from driftloop.serving.contract import BadRequest
from driftloop.serving.ids import new_request_id
from driftloop.serving.metrics import ServingMetrics, export_monitor_status
from driftloop.serving.parsing import parse_feedback, parse_predict
from driftloop.serving.poller import MAX_BACKOFF_S, RoutingPoller
from tests.support.fakes import FakeSource, ref

CFG = ServingSettings(max_text_chars=10, max_batch=3)


@pytest.fixture
def holder():
    source = FakeSource()
    return RoutingPoller(source, ServingMetrics(), interval_s=0.5), source


def value(holder: RoutingPoller, name: str, **labels) -> float:
    return holder.metrics.registry.get_sample_value(name, labels) or 0.0


def test_nothing_serves_until_there_is_a_champion(holder):
    h, source = holder
    assert h.poll() is False and h.current is None and h.version_or_none() == "none"
    source.ref = ref("1")
    assert h.poll() is True
    assert h.current.ref == ref("1") and h.version_or_none() == "1"
    assert h.current.model.predicted > 0, "warmed up before it serves"


def test_an_unmoved_champion_is_not_reloaded(holder):
    h, source = holder
    source.ref = ref("1")
    h.poll()
    assert h.poll() is False and h.poll() is False
    assert source.loads == ["1"]


def test_a_failed_load_keeps_the_old_model_counts_and_backs_off(holder):
    h, source = holder
    source.ref = ref("1")
    h.poll_safely()
    source.ref, source.broken = ref("2"), {"2"}
    delays = []
    for _ in range(9):
        assert h.poll_safely() is False
        delays.append(h.next_delay())
    assert h.current.ref == ref("1")
    assert value(h, "driftloop_errors_total", kind="reload") == 9
    assert delays[:3] == [1.0, 2.0, 4.0]
    assert max(delays) == MAX_BACKOFF_S
    source.broken = set()
    assert h.poll_safely() is True
    assert h.current.ref == ref("2") and h.next_delay() == 0.5


def test_a_missing_champion_keeps_the_current_model(holder):
    h, source = holder
    source.ref = ref("1")
    h.poll()
    source.ref = None
    assert h.poll() is False and h.current.ref == ref("1")


def test_a_rollback_to_the_previous_version_needs_no_load(holder):
    h, source = holder
    for version in ["1", "2", "1"]:
        source.ref = ref(version)
        assert h.poll() is True
    assert source.loads == ["1", "2"]
    assert h.current.ref == ref("1")


def test_the_info_gauge_names_only_the_serving_version(holder):
    h, source = holder
    for version in ["1", "2"]:
        source.ref = ref(version)
        h.poll()
    assert value(h, "driftloop_model_info", model_name="m", model_version="2", slot="champion") == 1
    assert (
        h.metrics.registry.get_sample_value(
            "driftloop_model_info", {"model_name": "m", "model_version": "1", "slot": "champion"}
        )
        is None
    )
    assert value(h, "driftloop_model_swaps_total") == 2


def test_request_ids_are_uuid4_hex():
    ids = {new_request_id() for _ in range(5000)}
    assert len(ids) == 5000
    for rid in list(ids)[:200]:
        parsed = uuid.UUID(hex=rid)
        assert rid == parsed.hex and parsed.version == 4 and parsed.variant == uuid.RFC_4122


@pytest.mark.parametrize(
    ("payload", "texts"),
    [
        ({"text": "hello"}, ["hello"]),
        ({"texts": ["a", "b", "c"]}, ["a", "b", "c"]),
        ({"text": "x" * 10}, ["x" * 10]),
    ],
)
def test_good_predict_bodies_give_their_texts(payload, texts):
    assert parse_predict(json.dumps(payload).encode(), CFG) == texts


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b'{"text": "x" }', None, None),
        (json.dumps({"text": "x" * 11}).encode(), 422, "text"),
        (json.dumps({"texts": ["a"] * 4}).encode(), 422, "texts"),
        (json.dumps({"texts": ["a", "", "b"]}).encode(), 422, "texts[1]"),
        (b"\xff", 400, "body"),
        (b"{", 400, "body"),
        (b"", 400, "body"),
    ],
)
def test_bad_predict_bodies_name_the_field(body, status, field):
    if status is None:
        assert parse_predict(body, CFG) == ["x"]
        return
    with pytest.raises(BadRequest) as caught:
        parse_predict(body, CFG)
    assert caught.value.status == status
    assert caught.value.problems[0][0] == field
    assert str(caught.value).startswith(f"{field}: ")


def test_a_batch_of_bad_texts_reports_at_most_ten():
    cfg = ServingSettings(max_batch=50)
    with pytest.raises(BadRequest) as caught:
        parse_predict(json.dumps({"texts": [""] * 40}).encode(), cfg)
    assert len(caught.value.problems) == 10


def test_feedback_is_stripped_and_checked():
    assert parse_feedback(b'{"request_id": " r1 ", "label": " new_intent "}') == ("r1", "new_intent")
    with pytest.raises(BadRequest, match="label: missing"):
        parse_feedback(b'{"request_id": "r1"}')


def test_fastapi_validation_errors_are_rewritten_to_name_the_field(tmp_path):
    from fastapi.testclient import TestClient

    from driftloop.serving.app import create_app

    app = create_app(ServingSettings(), FakeSource(), tmp_path)

    @app.get("/typed")
    async def typed(n: int) -> dict:  # any typed parameter goes through FastAPI's validation
        return {"n": n}

    response = TestClient(app).get("/typed", params={"n": "abc"})  # no lifespan: no threads
    assert response.status_code == 422
    body = response.json()
    assert body["detail"].startswith("n: ")
    assert body["errors"][0]["field"] == "n"


def test_a_canary_gets_its_share_sticky_per_caller(holder):
    h, source = holder
    source.ref = ref("1")
    source.state = RolloutState(rollout_id="r1", mode="canary", challenger="2", weight=0.1, stage="canary-10")
    assert h.poll() is True
    snap = h.serving
    assert snap.canary.loaded.ref == ref("2") and snap.shadow is None
    callers = [f"caller-{i}".encode() for i in range(4000)]
    picked = {c for c in callers if snap.pick_canary(c)}
    assert 0.08 < len(picked) / len(callers) < 0.12
    again = {c for c in callers if snap.pick_canary(c)}
    assert again == picked, "the same caller always lands on the same side"
    source.state = RolloutState(rollout_id="r1", mode="canary", challenger="2", weight=0.5, stage="canary-50")
    assert h.poll() is True
    wider = {c for c in callers if h.serving.pick_canary(c)}
    assert picked <= wider, "growing the weight keeps every canary caller on the canary"
    assert 0.45 < len(wider) / len(callers) < 0.55
    assert source.loads == ["1", "2"], "changing the split loads nothing"
    assert value(h, "driftloop_traffic_weight", slot="canary", model_version="2") == 0.5
    assert value(h, "driftloop_traffic_weight", slot="champion", model_version="1") == 0.5


def test_shadow_and_blue_green_route_no_user_to_the_challenger(holder):
    h, source = holder
    source.ref = ref("1")
    source.state = RolloutState(rollout_id="r1", mode="shadow", challenger="2", stage="shadow")
    h.poll()
    assert h.serving.canary is None and h.serving.shadow.loaded.ref == ref("2")
    assert h.serving.shadow.bound.slot == "shadow"
    source.state = RolloutState(rollout_id="r2", mode="bluegreen", challenger="2", stage="standby")
    h.poll()
    assert h.serving.canary is None and h.serving.shadow is None
    assert h.serving.standby.ref == ref("2"), "blue-green keeps the new version loaded and warm"
    # the switch: the champion alias moves, no load, and the old one stays loaded to switch back
    source.ref, source.state = ref("2"), RolloutState()
    h.poll()
    source.ref = ref("1")
    h.poll()
    assert source.loads == ["1", "2"]


def test_a_challenger_that_cannot_load_leaves_the_champion_serving_alone(holder):
    h, source = holder
    source.ref = ref("1")
    source.broken = {"2"}
    source.state = RolloutState(rollout_id="r1", mode="canary", challenger="2", weight=0.5, stage="c")
    assert h.poll() is True
    assert h.serving.canary is None and h.serving.complete is False
    assert h.current.ref == ref("1")
    assert value(h, "driftloop_errors_total", kind="load_challenger") == 1
    source.broken = set()
    assert h.poll() is True and h.serving.complete and h.serving.canary.loaded.ref == ref("2")


def test_a_rollout_state_is_validated():
    with pytest.raises(ValueError, match="needs a challenger"):
        RolloutState(mode="canary", weight=0.1)
    with pytest.raises(ValueError, match="mode 'blue'"):
        RolloutState(mode="blue", challenger="2")
    with pytest.raises(ValueError, match="weight"):
        RolloutState(mode="canary", challenger="2", weight=1.5)


def test_the_monitoring_verdict_comes_with_the_routing_and_never_rebuilds_the_snapshot(holder):
    h, source = holder
    source.ref = ref("1")
    assert h.poll() is True
    snapshot = h.serving
    source.monitor = MonitorStatus("1", True, 0.42, "2026-12-02T01:00:00+00:00")
    assert h.poll() is False and h.serving is snapshot  # a new verdict: nothing reloaded or swapped
    export_monitor_status(h.monitor, h.metrics)
    assert value(h, "driftloop_drift_detected") == 1.0 and value(h, "driftloop_drift_share") == 0.42
    source.monitor = None  # no verdict (a foreign tag): the gauges keep their last value
    h.poll()
    export_monitor_status(h.monitor, h.metrics)
    assert value(h, "driftloop_drift_share") == 0.42
