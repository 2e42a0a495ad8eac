"""The trigger ledger's race, the same for every backend: monitors that claim drift windows at the
same moment, as threads of one process or as processes of their own, each with its own ledger
object (as separate monitor runs would have)."""

from __future__ import annotations

import functools
import multiprocessing
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from driftloop.adapters.history import RetrainCheck, TriggerLedger
from driftloop.config.settings import MonitorSettings, RetrainPolicy
from driftloop.core.policy import TriggerRecord, should_retrain
from driftloop.core.types import DriftResult, RetrainDecision, SignalResult

MONITOR = MonitorSettings(min_window=100, window_size=400)
POLICY = RetrainPolicy(cooldown_s=600)
# Long enough that every racer reads the ledger before the first one writes, were the claim not
# atomic: a read-then-append ledger lets several of them win.
PAUSE_S = 0.05


def drifted(window_id: str) -> DriftResult:
    """A confirmed drift of a big enough window: the policy says retrain unless the ledger objects."""
    signal = SignalResult("text_drift", 0.9, 0.6, True)
    return DriftResult(window_id, None, None, 500, 300, (signal,), True, 1.0)


def _paused_policy(result: DriftResult, pause_s: float, records: list[TriggerRecord], now: datetime) -> RetrainDecision:
    time.sleep(pause_s)
    return should_retrain(result, MONITOR, POLICY, records, now)


def slow_check(window_id: str, pause_s: float = PAUSE_S) -> RetrainCheck:
    """``core.policy.should_retrain`` for a drifted ``window_id``, pausing before it answers."""
    return functools.partial(_paused_policy, drifted(window_id), pause_s)


LedgerFactory = Callable[[], TriggerLedger]


def claim_in_threads(make_ledger: LedgerFactory, window_ids: list[str]) -> list[RetrainDecision]:
    """One thread per window id, all claiming at once; their decisions, in order."""
    start = threading.Barrier(len(window_ids))

    def claim(numbered: tuple[int, str]) -> RetrainDecision:
        i, window_id = numbered
        ledger = make_ledger()
        start.wait(timeout=30)
        return ledger.claim_window(window_id, slow_check(window_id), run=f"thread-{i}")

    with ThreadPoolExecutor(len(window_ids)) as pool:
        return list(pool.map(claim, enumerate(window_ids)))


def claim_in_processes(make_ledger: LedgerFactory, window_ids: list[str]) -> list[RetrainDecision]:
    """One forked process per window id, all claiming at once; their decisions (in the order they
    came back). A process that failed fails the caller with its error."""
    ctx = multiprocessing.get_context("fork")
    start = ctx.Barrier(len(window_ids))
    answers = ctx.Queue()

    def claim(i: int, window_id: str) -> None:
        try:
            ledger = make_ledger()
            start.wait(timeout=30)
            answers.put(ledger.claim_window(window_id, slow_check(window_id), run=f"process-{i}"))
        except BaseException as exc:  # noqa: BLE001  reported to the parent, which fails the test
            answers.put(RuntimeError(f"process {i}: {exc!r}"))

    procs = [ctx.Process(target=claim, args=(i, w)) for i, w in enumerate(window_ids)]
    for proc in procs:
        proc.start()
    try:
        out = [answers.get(timeout=60) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=30)
    for answer in out:
        if isinstance(answer, Exception):
            raise answer
    return out


RACES = (claim_in_threads, claim_in_processes)
