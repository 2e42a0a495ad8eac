"""The serving app's micro-batcher: concurrent requests to a busy model share one forward pass,
answers go back to their own requests, and one bad input fails only its own request."""

from __future__ import annotations

import asyncio
import threading

import pytest

from driftloop.core.types import Prediction
from driftloop.serving.batching import MicroBatcher, QueueFull


class SlowModel:
    """Predicts the text's length as its intent; the first call waits for ``release``, so the
    requests sent meanwhile queue up behind it."""

    def __init__(self, bad: str | None = None):
        self.calls: list[list[str]] = []
        self.release = threading.Event()
        self.bad = bad

    def __call__(self, texts: list[str]) -> tuple[list[Prediction], list[int]]:
        self.calls.append(list(texts))
        if len(self.calls) == 1:
            assert self.release.wait(10)
        if self.bad in texts:
            raise ValueError(f"cannot read {self.bad!r}")
        return [Prediction(str(len(t)), 1.0) for t in texts], [len(t.split()) for t in texts]


async def _send(batcher: MicroBatcher, model: SlowModel, requests: list[list[str]]) -> list:
    first = asyncio.create_task(batcher.submit(requests[0]))
    await asyncio.sleep(0.05)  # the first request is in the model now
    rest = [asyncio.create_task(batcher.submit(r)) for r in requests[1:]]
    await asyncio.sleep(0.05)
    model.release.set()
    return await asyncio.gather(first, *rest, return_exceptions=True)


def test_requests_that_wait_share_one_forward_pass_and_get_their_own_answers():
    model = SlowModel()
    batcher = MicroBatcher(model, max_texts=64)
    requests = [["a"], ["bb", "ccc cc"], ["dddd"], ["eeeee"]]
    answers = asyncio.run(_send(batcher, model, requests))
    assert model.calls == [["a"], ["bb", "ccc cc", "dddd", "eeeee"]]
    assert batcher.batches == 2
    for texts, (predictions, tokens) in zip(requests, answers, strict=True):
        assert [p.intent for p in predictions] == [str(len(t)) for t in texts]
        assert tokens == [len(t.split()) for t in texts]


def test_a_batch_never_exceeds_max_texts_and_a_request_is_never_split():
    model = SlowModel()
    batcher = MicroBatcher(model, max_texts=3)
    requests = [["a"], ["b", "c"], ["d", "e"], ["f"], ["g", "h", "i", "j"]]
    answers = asyncio.run(_send(batcher, model, requests))
    # a request larger than max_texts still goes whole, on its own
    assert model.calls == [["a"], ["b", "c"], ["d", "e", "f"], ["g", "h", "i", "j"]]
    assert [[p.intent for p in a[0]] for a in answers] == [["1"] * len(r) for r in requests]


def test_one_bad_input_fails_only_its_own_request():
    model = SlowModel(bad="boom")
    batcher = MicroBatcher(model, max_texts=64)
    answers = asyncio.run(_send(batcher, model, [["a"], ["bb"], ["boom"], ["dddd"]]))
    assert isinstance(answers[2], ValueError) and "boom" in str(answers[2])
    assert [[p.intent for p in a[0]] for i, a in enumerate(answers) if i != 2] == [["1"], ["2"], ["4"]]
    # the shared pass failed, then each of its requests ran alone to find the culprit
    assert model.calls[1] == ["bb", "boom", "dddd"] and model.calls[2:] == [["bb"], ["boom"], ["dddd"]]


def test_a_lone_request_goes_at_once_and_a_cancelled_one_is_skipped():
    async def scenario():
        model = SlowModel()
        model.release.set()
        batcher = MicroBatcher(model, max_texts=64)
        predictions, _ = await asyncio.wait_for(batcher.submit(["only"]), 5)
        assert [p.intent for p in predictions] == ["4"] and model.calls == [["only"]]

        model.calls.clear()
        model.release.clear()
        first = asyncio.create_task(batcher.submit(["x"]))
        await asyncio.sleep(0.05)
        gone = asyncio.create_task(batcher.submit(["left"]))
        kept = asyncio.create_task(batcher.submit(["kept"]))
        await asyncio.sleep(0.05)
        gone.cancel()  # the client disconnected while it waited
        model.release.set()
        await first
        assert [p.intent for p in (await kept)[0]] == ["4"]
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert model.calls == [["x"], ["kept"]]

    asyncio.run(scenario())


def test_the_queue_is_bounded_and_a_refused_request_costs_nothing():
    async def scenario():
        model = SlowModel()
        batcher = MicroBatcher(model, max_texts=64, max_queued=4)
        first = asyncio.create_task(batcher.submit(["a"] * 10))  # nothing waits: taken, whatever its size
        await asyncio.sleep(0.05)  # in the model now; the queue is empty again
        assert batcher.queued == 0
        waiting = [asyncio.create_task(batcher.submit(t)) for t in (["b", "c"], ["d", "e"])]
        await asyncio.sleep(0)
        assert batcher.queued == 4
        with pytest.raises(QueueFull, match="4 texts already wait"):
            await batcher.submit(["f"])
        assert batcher.queued == 4  # the refused request left nothing behind
        model.release.set()
        await first
        answers = await asyncio.gather(*waiting)
        assert [[p.intent for p in a[0]] for a in answers] == [["1", "1"], ["1", "1"]]
        assert batcher.queued == 0
        # with room again, a request is taken
        assert [p.intent for p in (await batcher.submit(["gg"]))[0]] == ["2"]

    asyncio.run(scenario())


def test_a_cancelled_request_gives_its_room_back():
    async def scenario():
        model = SlowModel()
        batcher = MicroBatcher(model, max_texts=64, max_queued=2)
        first = asyncio.create_task(batcher.submit(["x"]))
        await asyncio.sleep(0.05)
        gone = asyncio.create_task(batcher.submit(["a", "b"]))
        await asyncio.sleep(0)
        gone.cancel()
        model.release.set()
        await first
        await asyncio.sleep(0.05)
        assert batcher.queued == 0

    asyncio.run(scenario())
