"""Micro-batching: concurrent requests to one busy model coalesced into one forward pass."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TypeAlias

from anyio.to_thread import run_sync

from driftloop.core.types import Prediction
from driftloop.serving.limits import Overloaded

Answer: TypeAlias = tuple[list[Prediction], list[int]]
"""A model's predictions for some texts and each text's token count."""
_Waiting: TypeAlias = tuple[list[str], "asyncio.Future[Answer]"]


class QueueFull(Overloaded):
    """The micro-batcher already holds ``max_queued`` texts for the model: the request is refused."""


class MicroBatcher:
    """Coalesces concurrent ``/predict`` calls to one model into one forward pass.

    A transformer answers 64 texts in one batch in about a quarter of the time of 64 calls of one
    text, and parallel calls only fight over the same cores. So one call at a time runs in a
    worker thread; the requests that arrive meanwhile wait here, and when the model is free it
    takes all of them (up to ``max_texts``) as the next batch. There is no timer: a lone request
    goes at once, and under load the batches form by themselves. A batch that fails is retried
    request by request, so one bad input fails only its own request.

    The queue is bounded: past ``max_queued`` texts waiting, :meth:`submit` raises
    :class:`QueueFull` at once (the server answers 503) instead of letting the queue grow with
    whatever a client sends. A request is always taken when nothing waits, whatever its size.
    """

    def __init__(
        self,
        predict: Callable[[list[str]], Answer],
        max_texts: int,
        on_batch: Callable[[int], None] | None = None,
        max_queued: int = 256,
    ):
        self._predict = predict
        self.max_texts = max_texts
        self.max_queued = max_queued
        self._on_batch = on_batch
        self._pending: deque[_Waiting] = deque()
        self.queued = 0  # texts waiting in _pending
        self._running = False
        self.batches = 0  # forward passes run (tests, and the batch-size metric's count)

    async def submit(self, texts: list[str]) -> Answer:
        """The predictions for ``texts``, made in the next batch the model runs; raises
        :class:`QueueFull` when they would take the queue past ``max_queued`` texts."""
        if self.queued and self.queued + len(texts) > self.max_queued:
            raise QueueFull(f"{self.queued} texts already wait for the model (serving.max_queued_texts)")
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._pending.append((texts, future))
        self.queued += len(texts)
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    def _next_batch(self) -> list[_Waiting]:
        batch = [self._pending.popleft()]
        size = len(batch[0][0])
        while self._pending and size + len(self._pending[0][0]) <= self.max_texts:
            batch.append(self._pending.popleft())
            size += len(batch[-1][0])
        self.queued -= size
        return [(texts, future) for texts, future in batch if not future.done()]  # left

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._next_batch()
                if not batch:
                    continue
                texts = [t for part, _ in batch for t in part]
                self.batches += 1
                if self._on_batch is not None:
                    self._on_batch(len(texts))
                try:
                    predictions, tokens = await run_sync(self._predict, texts)
                except Exception as exc:  # noqa: BLE001  a model's failure is the waiting requests' answer
                    await self._one_by_one(batch, exc)
                    continue
                at = 0
                for part, future in batch:
                    _settle(future, (predictions[at : at + len(part)], tokens[at : at + len(part)]))
                    at += len(part)
        finally:
            self._running = False
            if self._pending:  # left behind by an exception that ended the loop: start over
                self._running = True
                asyncio.get_running_loop().create_task(self._drain())

    async def _one_by_one(self, batch: list[_Waiting], exc: Exception) -> None:
        """A failed batch: one request alone gets the error, several are each tried on their own."""
        if len(batch) == 1:
            _settle(batch[0][1], exc=exc)
            return
        for part, future in batch:  # find the culprit: each request on its own
            try:
                _settle(future, await run_sync(self._predict, part))
            except Exception as exc:  # noqa: BLE001  as above, for this request alone
                _settle(future, exc=exc)


def _settle(future: asyncio.Future[Answer], result: Answer | None = None, exc: BaseException | None = None) -> None:
    if future.done():  # the caller went away (cancelled)
        return
    if exc is not None:
        future.set_exception(exc)
    elif result is not None:
        future.set_result(result)
