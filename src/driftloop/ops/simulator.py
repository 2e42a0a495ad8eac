"""A traffic simulator: real HTTP requests to the serving app, and annotators posting labels.

It knows the true label of every text it sends (that is what makes the accuracy figures
possible), but the monitor never sees those labels except through ``/feedback``.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import numpy as np
import pandas as pd

from driftloop.data.dataset import LABEL, TEXT, DataError


@dataclass(frozen=True)
class Answer:
    request_id: str
    text: str
    true_label: str
    intent: str
    confidence: float
    model_version: str
    status: int


def wait_ready(url: str, timeout_s: float, proc: subprocess.Popen | None = None, hint: str = "") -> None:
    """Poll ``url``/ready until it answers 200; fail early if ``proc`` (the server) exits."""
    # A readiness wait with its own timeout, not a retry of a call (driftloop.core.retry).
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}{hint}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout_s:.0f}s{hint}")


def mix(known: pd.DataFrame, new: pd.DataFrame, n: int, new_share: float, seed: int) -> pd.DataFrame:
    """``n`` texts, ``new_share`` of them from the new labels, each drawn without replacement."""
    rng = np.random.default_rng(seed)
    n_new = round(n * new_share)
    n_known = n - n_new
    if n_new > len(new) or n_known > len(known):
        raise ValueError(f"asked for {n_known} known + {n_new} new texts, pools hold {len(known)} + {len(new)}")
    parts = [known.iloc[rng.choice(len(known), n_known, replace=False)]]
    if n_new:
        parts.append(new.iloc[rng.choice(len(new), n_new, replace=False)])
    out = pd.concat(parts, ignore_index=True)
    return out.iloc[rng.permutation(len(out))].reset_index(drop=True)


@dataclass(frozen=True)
class TrafficPlan:
    """How many requests each phase of the scenario sends, sized to the data set's pools."""

    quiet: int
    drift: int
    after: int
    scaled: bool  # fewer than configured: the pools are too small for the configured traffic

    def summary(self) -> str:
        return f"{self.quiet} quiet, {self.drift} drifted, {self.after} after the retrain"


def plan_traffic(
    quiet: int, drift: int, after: int, new_share: float, known_pool: int, new_pool: int, min_window: int
) -> TrafficPlan:
    """Fit the configured traffic into the pools without repeating a text within a phase.

    The quiet phase draws from the whole known pool; the drifted phase and the one after the
    retrain must not share texts (v2 trains on the drifted phase's labelled ones), so together
    they scale down, in proportion, to what the pools hold. A data set whose pools cannot fill
    even a monitoring window (``min_window``) in each phase is refused with what it lacks."""
    scale = 1.0
    later = drift + after
    if later and new_share < 1:
        scale = min(scale, known_pool / (later * (1 - new_share)))
    if later and new_share > 0:
        scale = min(scale, new_pool / (later * new_share))
    n_drift, n_after = int(drift * scale), int(after * scale)

    def fits() -> bool:  # mix() rounds each phase's new-label count on its own
        new_needed = round(n_drift * new_share) + round(n_after * new_share)
        return new_needed <= new_pool and n_drift + n_after - new_needed <= known_pool

    while (n_drift or n_after) and not fits():
        if n_after:
            n_after -= 1
        else:
            n_drift -= 1
    plan = TrafficPlan(
        quiet=min(quiet, known_pool), drift=n_drift, after=n_after, scaled=scale < 1 or quiet > known_pool
    )
    short = [
        f"{name} phase {n} < {min_window}"
        for name, n in (("quiet", plan.quiet), ("drift", plan.drift))
        if n < min_window
    ]
    if short:
        raise DataError(
            f"the data set leaves {known_pool} known-label and {new_pool} new-label texts for simulated traffic: "
            f"too few for monitoring windows of monitor.min_window={min_window} ({'; '.join(short)}); "
            f"lower data.eval_fraction or data.reference_fraction, withhold more data.new_labels, or lower "
            f"monitor.min_window"
        )
    return plan


async def _send_all(base_url: str, frame: pd.DataFrame, concurrency: int, timeout: float) -> list[Answer]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    answers: list[Answer | None] = [None] * len(frame)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(frame)):
        queue.put_nowait(i)
    texts, labels = frame[TEXT].tolist(), frame[LABEL].tolist()

    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout) as client:

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                try:
                    resp = await client.post("/predict", json={"text": texts[i]})
                    if resp.status_code == 200:
                        body = resp.json()
                        pred = body["predictions"][0]
                        answers[i] = Answer(
                            pred["request_id"],
                            texts[i],
                            labels[i],
                            pred["intent"],
                            float(pred["confidence"]),
                            str(body["model_version"]),
                            200,
                        )
                    else:
                        answers[i] = Answer("", texts[i], labels[i], "", 0.0, "", resp.status_code)
                except httpx.HTTPError:
                    answers[i] = Answer("", texts[i], labels[i], "", 0.0, "", 0)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return [a for a in answers if a is not None]


def send(base_url: str, frame: pd.DataFrame, concurrency: int = 8, timeout: float = 10.0) -> list[Answer]:
    """POST every text of ``frame`` to ``/predict``, ``concurrency`` at a time."""
    return asyncio.run(_send_all(base_url, frame, concurrency, timeout))


def annotate(base_url: str, answers: list[Answer], share: float, seed: int, token: str | None = None) -> int:
    """Post the true label of ``share`` of the answered requests to ``/feedback``; returns the count."""
    rng = np.random.default_rng(seed)
    ok = [a for a in answers if a.status == 200]
    chosen = [ok[i] for i in sorted(rng.choice(len(ok), round(len(ok) * share), replace=False))] if ok else []
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    posted = 0
    with httpx.Client(base_url=base_url, timeout=10.0, headers=headers) as client:
        for a in chosen:
            resp = client.post("/feedback", json={"request_id": a.request_id, "label": a.true_label})
            resp.raise_for_status()
            posted += 1
    return posted


def accuracy(answers: list[Answer]) -> float:
    ok = [a for a in answers if a.status == 200]
    return float(np.mean([a.intent == a.true_label for a in ok])) if ok else float("nan")


class LiveTraffic:
    """Production-like traffic in a background thread until stopped: batches of ``mix(known, new,
    batch, new_share)`` sent ``concurrency`` at a time, ``label_share`` of each batch labelled by
    annotators. A rollout needs live traffic while it runs; this is it in the demo."""

    def __init__(
        self,
        base_url: str,
        known: pd.DataFrame,
        new: pd.DataFrame,
        new_share: float,
        label_share: float,
        concurrency: int,
        seed: int,
        batch: int = 200,
        start_when: Callable[[], bool] | None = None,
        token: str | None = None,
    ):
        """``start_when``: traffic waits until it returns true (checked every 0.2 s); ``token``:
        the bearer token /feedback needs."""
        import threading

        self.start_when = start_when
        self.base_url, self.known, self.new = base_url, known, new
        self.new_share, self.label_share, self.concurrency = new_share, label_share, concurrency
        self.seed, self.batch = seed, batch
        self.token = token
        self.answers: list[Answer] = []
        self.labelled = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="live-traffic", daemon=True)

    def __enter__(self) -> LiveTraffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while self.start_when is not None and not self._stop.is_set():
            try:
                if self.start_when():
                    break
            except Exception:  # noqa: BLE001, S110  the source is busy or briefly unreachable: ask again
                pass
            self._stop.wait(0.2)
        i = 0
        while not self._stop.is_set():
            frame = mix(self.known, self.new, self.batch, self.new_share, self.seed + i)
            answers = send(self.base_url, frame, self.concurrency)
            self.answers.extend(answers)
            self.labelled += annotate(self.base_url, answers, self.label_share, self.seed + i, token=self.token)
            i += 1

    @property
    def failed(self) -> int:
        return sum(a.status != 200 for a in self.answers)
