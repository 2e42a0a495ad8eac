"""Bounds under abuse: the texts a serving process holds at once, and each caller's rate.

Pure: no HTTP and no event loop here, and every clock is a parameter, so the arithmetic is
unit-tested with a fake clock. The handlers (:mod:`driftloop.serving.handlers`) turn a refusal
into a 503 or a 429 with ``Retry-After``.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

Clock = Callable[[], float]

# Callers whose buckets are remembered; past it the least recently seen is forgotten (a bucket
# idle for burst/rate seconds is full again, the same as a new one), so a flood of addresses
# costs bounded memory.
MAX_CALLERS = 10_000


class Overloaded(Exception):
    """The process holds as many texts as it may (in flight, or waiting for a busy model): the
    request is refused (503 with Retry-After), nothing of it queued."""


def retry_after(seconds: float) -> int:
    """A ``Retry-After`` value: whole seconds, at least 1 (HTTP takes no fractions)."""
    return max(1, math.ceil(seconds))


class TokenBucket:
    """A token bucket of ``burst`` tokens refilled at ``rate_per_s``, in debt when a request costs
    more than it holds.

    A request is let in when the bucket holds at least one token (:meth:`wait`), then costs what
    it turns out to be (:meth:`charge`, the texts of a batch): the bucket may go below zero, and
    the caller waits until it is refilled. So a batch larger than the burst still passes once,
    and costs its full price."""

    __slots__ = ("burst", "rate_per_s", "stamp", "tokens")

    def __init__(self, rate_per_s: float, burst: float, now: float):
        if rate_per_s <= 0 or burst < 1:
            raise ValueError(f"a token bucket needs a rate above 0 and a burst of at least 1 ({rate_per_s}, {burst})")
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate_per_s)
            self.stamp = now

    def wait(self, now: float) -> float:
        """Seconds until a request may go (0.0: now)."""
        self._refill(now)
        if self.tokens >= 1.0:
            return 0.0
        return (1.0 - self.tokens) / self.rate_per_s

    def charge(self, cost: float, now: float) -> None:
        """Take ``cost`` tokens (the bucket may go into debt)."""
        self._refill(now)
        self.tokens -= cost

    def full(self, now: float) -> bool:
        """Whether the bucket is full again (then it is the same as a new one)."""
        self._refill(now)
        return self.tokens >= self.burst


class CallerLimits:
    """One :class:`TokenBucket` per caller, at most ``max_callers`` remembered."""

    def __init__(
        self, rate_per_s: float, burst: int, clock: Clock = time.monotonic, max_callers: int = MAX_CALLERS
    ) -> None:
        TokenBucket(rate_per_s, burst, 0.0)  # the same checks, at construction
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.clock = clock
        self.max_callers = max_callers
        self._buckets: OrderedDict[bytes, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def _bucket(self, caller: bytes) -> TokenBucket:
        bucket = self._buckets.get(caller)
        if bucket is None:
            bucket = self._buckets[caller] = TokenBucket(self.rate_per_s, self.burst, self.clock())
            while len(self._buckets) > self.max_callers:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(caller)
        return bucket

    def wait(self, caller: bytes) -> float:
        """Seconds until ``caller`` may send its next request (0.0: now)."""
        return self._bucket(caller).wait(self.clock())

    def charge(self, caller: bytes, texts: int) -> None:
        """``caller``'s request turned out to hold ``texts`` texts."""
        self._bucket(caller).charge(float(texts), self.clock())


class InFlight:
    """The texts a process is predicting or holding for the model, against a limit.

    A request enters with its texts when they fit under ``limit``, or when nothing is in flight
    (so a batch larger than the limit is still answered, alone); it leaves once answered."""

    __slots__ = ("limit", "texts")

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError(f"the in-flight limit must be at least 1 (got {limit})")
        self.limit = limit
        self.texts = 0

    def enter(self, texts: int) -> bool:
        """Take room for ``texts``; False (and nothing taken) when they do not fit."""
        if self.texts and self.texts + texts > self.limit:
            return False
        self.texts += texts
        return True

    def leave(self, texts: int) -> None:
        """Give back the room of an answered request."""
        self.texts -= texts


def caller_key(holds_token: bool, client: tuple[str, int] | list[object] | None) -> bytes:
    """Who a request is from, for its rate: the API token's holder when it sent the right token,
    else the client's address (uvicorn puts a trusted proxy's ``X-Forwarded-For`` there)."""
    if holds_token:
        return b"token"
    if client:
        return f"addr:{client[0]}".encode()
    return b"addr:unknown"
