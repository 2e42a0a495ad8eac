"""The prediction service without HTTP: real (tiny TF-IDF) models behind a routing poller, texts in,
typed answers out, and the prediction and feedback logs written as the app would write them."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from driftloop.adapters.predlog import read_feedback, read_predictions
from driftloop.config.settings import ServingSettings
from driftloop.core.types import ModelRef, RolloutState, Routing
from driftloop.models.families import TextClassifier, TfidfFamily
from driftloop.serving.metrics import ServingMetrics
from driftloop.serving.poller import RoutingPoller
from driftloop.serving.service import INLINE_TEXTS, Answered, ModelFailed, NotReady, PredictionService
from tests.support.data import TINY_PARAMS, tiny_frame
from tests.support.rollout_models import FailingClassifier
from tests.support.serving import LABELS_V1, TEXTS

NEW_LABEL = "card_swallowed"


class ModelsSource:
    """A model source over models held in memory: the registry's part without MLflow."""

    def __init__(self, models: dict[str, TextClassifier]):
        self.models = models
        self.champion: str | None = None
        self.state = RolloutState()

    def routing(self) -> Routing:
        return Routing(ModelRef("intents", self.champion) if self.champion else None, self.state)

    def load(self, ref: ModelRef) -> TextClassifier:
        return self.models[ref.version]


@pytest.fixture(scope="module")
def v1(banking_train) -> TextClassifier:
    return TfidfFamily().fit(tiny_frame(banking_train, LABELS_V1), TINY_PARAMS)


@pytest.fixture(scope="module")
def v2(banking_train) -> TextClassifier:
    return TfidfFamily().fit(tiny_frame(banking_train, [*LABELS_V1, NEW_LABEL]), TINY_PARAMS)


def make_service(tmp_path, models, **settings) -> tuple[PredictionService, ModelsSource]:
    source = ModelsSource(models)
    source.champion = "1"
    cfg = ServingSettings(**settings)
    metrics = ServingMetrics()
    poller = RoutingPoller(source, metrics, cfg.reload_interval_s, 0.5, cfg.micro_batch_texts)
    service = PredictionService(cfg, poller, metrics, tmp_path)
    return service, source


def count(service: PredictionService, name: str, **labels) -> float:
    return service.metrics.registry.get_sample_value(name, labels) or 0.0


def answer(service: PredictionService, texts: list[str], **kwargs) -> Answered | ModelFailed:
    return asyncio.run(service.predict(texts, **kwargs))


def test_without_a_champion_there_is_nothing_to_answer_with(tmp_path, v1):
    service, source = make_service(tmp_path, {"1": v1})
    source.champion = None
    service.poller.poll()
    assert service.snapshot() is None
    with pytest.raises(NotReady):
        answer(service, ["my card has not arrived yet"])


def test_the_champion_answers_each_text_and_logs_it_before_returning(tmp_path, v1):
    service, _ = make_service(tmp_path, {"1": v1})
    assert service.poller.poll() is True
    service.open()
    try:
        answered = answer(service, TEXTS[:3])
        assert isinstance(answered, Answered)
        assert (answered.model_name, answered.model_version, answered.slot_name) == ("intents", "1", "champion")
        assert answered.predictions == v1.predict(TEXTS[:3]), "the model's own answers, in order"
        assert answered.tokens == [len(t.split()) for t in TEXTS[:3]]
        assert len(set(answered.ids)) == 3 and all(uuid.UUID(hex=i).version == 4 for i in answered.ids)
        logged = read_predictions(tmp_path)  # before close: each answer is in the log already
        assert logged["request_id"].tolist() == answered.ids
        assert logged["text"].tolist() == TEXTS[:3]
        assert logged["intent"].tolist() == [p.intent for p in answered.predictions]
        assert set(logged["model_version"]) == {"1"} and set(logged["slot"]) == {"champion"}
    finally:
        service.close()
    assert (
        count(service, "driftloop_requests_total", endpoint="predict", status="200", model_version="1", slot="champion")
        == 1
    )
    assert count(service, "driftloop_request_tokens_sum", model_version="1", slot="champion") == sum(answered.tokens)


def test_a_large_batch_goes_through_the_micro_batcher(tmp_path, v1):
    service, _ = make_service(tmp_path, {"1": v1})
    service.poller.poll()
    texts = (TEXTS * 2)[: INLINE_TEXTS + 3]
    service.open()
    try:
        answered = answer(service, texts)
    finally:
        service.close()
    assert isinstance(answered, Answered)
    assert answered.predictions == v1.predict(texts)
    batcher = service.snapshot().champion.batcher
    assert batcher is not None and batcher.batches == 1, "predicted off the event loop, in one forward pass"
    assert count(service, "driftloop_batch_texts_sum", model_version="1", slot="champion") == len(texts)


def test_a_canary_answers_its_callers_every_time(tmp_path, v1, v2):
    service, source = make_service(tmp_path, {"1": v1, "2": v2})
    source.state = RolloutState(rollout_id="r1", mode="canary", challenger="2", weight=0.5, stage="canary-50")
    service.poller.poll()
    snap = service.snapshot()
    callers = [f"caller-{i}".encode() for i in range(40)]
    on_canary = [c for c in callers if snap.pick_canary(c)]
    on_champion = [c for c in callers if not snap.pick_canary(c)]
    assert on_canary and on_champion
    service.open()
    try:
        for caller, slot, version in ((on_canary[0], "canary", "2"), (on_champion[0], "champion", "1")):
            for _ in range(3):
                answered = answer(service, ["where is my new card"], caller_id=caller)
                assert isinstance(answered, Answered)
                assert (answered.slot_name, answered.model_version) == (slot, version)
    finally:
        service.close()
    logged = read_predictions(tmp_path)
    assert logged.groupby("slot")["model_version"].agg(set).to_dict() == {"canary": {"2"}, "champion": {"1"}}


def test_a_failing_canary_is_answered_for_by_the_champion_and_logged_against_itself(tmp_path, v1, v2):
    broken = FailingClassifier(v2, every=2)  # the warm-up passes, the first request fails
    service, source = make_service(tmp_path, {"1": v1, "2": broken})
    source.state = RolloutState(rollout_id="r1", mode="canary", challenger="2", weight=1.0, stage="canary-100")
    service.poller.poll()
    service.open()
    try:
        answered = answer(service, ["someone stole my card"], caller_id=b"anyone")
    finally:
        service.close()
    assert isinstance(answered, Answered)
    assert (answered.slot_name, answered.model_version) == ("champion", "1")
    every = read_predictions(tmp_path, include_errors=True)
    failed = every[every["error"] != ""]
    assert failed["slot"].tolist() == ["canary"] and failed["model_version"].tolist() == ["2"]
    assert "cannot handle this input" in failed["error"].iloc[0]
    assert failed["request_id"].iloc[0] not in answered.ids, "the champion's answer has ids of its own"
    assert count(service, "driftloop_predict_errors_total", model_version="2", slot="canary") == 1


def test_a_failing_champion_is_a_typed_failure(tmp_path, v1):
    service, _ = make_service(tmp_path, {"1": FailingClassifier(v1, every=2)})
    service.poller.poll()
    service.open()
    try:
        failed = answer(service, ["my pin is blocked", "my top up did not work"])
    finally:
        service.close()
    assert isinstance(failed, ModelFailed)
    assert (failed.model_version, failed.slot_name, failed.texts) == ("1", "champion", 2)
    assert isinstance(failed.error, ValueError)
    assert len(read_predictions(tmp_path, include_errors=True)) == 2
    assert (
        count(service, "driftloop_requests_total", endpoint="predict", status="500", model_version="1", slot="champion")
        == 1
    )
    assert count(service, "driftloop_errors_total", kind="predict") == 1


def test_shadow_mode_mirrors_every_answer_to_the_challenger(tmp_path, v1, v2):
    service, source = make_service(tmp_path, {"1": v1, "2": v2})
    source.state = RolloutState(rollout_id="s1", mode="shadow", challenger="2", stage="shadow")
    service.poller.poll()
    service.open()
    try:
        answers = [answer(service, [text]) for text in TEXTS[:5]]
    finally:
        service.close()  # answers what is queued first
    assert all(isinstance(a, Answered) and a.slot_name == "champion" for a in answers)
    logged = read_predictions(tmp_path, include_shadow=True)
    shadow = logged[logged["slot"] == "shadow"]
    assert sorted(shadow["request_id"]) == sorted(i for a in answers for i in a.ids), "same ids as the answers"
    assert set(shadow["model_version"]) == {"2"}
    assert shadow.set_index("request_id")["intent"].to_dict() == {
        rid: p.intent for rid, p in zip(shadow["request_id"], v2.predict(shadow["text"].tolist()), strict=True)
    }
    compared = sum(
        count(service, "driftloop_shadow_comparisons_total", model_version="2", agree=a) for a in ("true", "false")
    )
    assert compared == 5


def test_feedback_is_logged_and_scored_against_the_answer_it_judges(tmp_path, v1):
    service, _ = make_service(tmp_path, {"1": v1})
    service.poller.poll()
    service.open()
    try:
        answered = answer(service, ["I lost my card in the street"])
        assert isinstance(answered, Answered)
        intent = answered.predictions[0].intent
        right = service.record_feedback(answered.ids[0], intent)
        wrong = service.record_feedback(answered.ids[0], NEW_LABEL)
        unknown = service.record_feedback("not-an-answer", "pin_blocked")
    finally:
        service.close()
    assert right.recorded and right.correct is True and right.answer.model_version == "1"
    assert wrong.recorded and wrong.correct is False and wrong.answer.slot == "champion"
    assert unknown.recorded and unknown.answer is None and unknown.correct is None
    assert read_feedback(tmp_path)["label"].tolist() == [intent, NEW_LABEL, "pin_blocked"]
    assert count(service, "driftloop_feedback_total") == 3
    assert count(service, "driftloop_feedback_labels_total", model_version="1", slot="champion", correct="true") == 1
    assert count(service, "driftloop_feedback_labels_total", model_version="1", slot="champion", correct="false") == 1


def test_the_answer_memory_forgets_the_oldest_first(tmp_path, v1):
    service, _ = make_service(tmp_path, {"1": v1}, feedback_memory=2)
    service.poller.poll()
    service.open()
    try:
        answered = answer(service, TEXTS[:3])
        assert isinstance(answered, Answered)
        outcomes = [service.record_feedback(rid, "pin_blocked") for rid in answered.ids]
    finally:
        service.close()
    assert [o.answer is not None for o in outcomes] == [False, True, True]
