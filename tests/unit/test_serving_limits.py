"""The serving app's bounds, pure: the token bucket and the per-caller rate limit on a fake clock,
the texts in flight, and the Retry-After value."""

from __future__ import annotations

import pytest

from driftloop.serving.limits import CallerLimits, InFlight, TokenBucket, caller_key, retry_after


class FakeClock:
    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_a_full_bucket_lets_the_burst_through_then_makes_the_caller_wait_for_the_refill():
    bucket = TokenBucket(rate_per_s=2.0, burst=3, now=0.0)
    for _ in range(3):
        assert bucket.wait(0.0) == 0.0
        bucket.charge(1, 0.0)
    assert bucket.wait(0.0) == pytest.approx(0.5)  # one token at 2 a second
    assert bucket.wait(0.25) == pytest.approx(0.25)
    assert bucket.wait(0.5) == 0.0


def test_the_bucket_never_holds_more_than_its_burst():
    bucket = TokenBucket(rate_per_s=10.0, burst=4, now=0.0)
    bucket.charge(4, 0.0)
    assert bucket.full(1000.0)
    assert bucket.tokens == 4.0


def test_a_batch_larger_than_the_burst_passes_once_and_pays_its_full_price_in_debt():
    bucket = TokenBucket(rate_per_s=10.0, burst=5, now=0.0)
    assert bucket.wait(0.0) == 0.0
    bucket.charge(25, 0.0)  # tokens: -20
    assert bucket.wait(0.0) == pytest.approx(2.1)  # 21 tokens to earn at 10 a second
    assert bucket.wait(2.0) == pytest.approx(0.1)
    assert bucket.wait(2.1) == 0.0


def test_a_clock_that_goes_back_gives_no_tokens():
    bucket = TokenBucket(rate_per_s=1.0, burst=1, now=10.0)
    bucket.charge(1, 10.0)
    assert bucket.wait(5.0) == pytest.approx(1.0)


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_a_bucket_that_could_never_let_anything_through_is_refused(rate, burst):
    with pytest.raises(ValueError, match="token bucket"):
        TokenBucket(rate, burst, 0.0)
    with pytest.raises(ValueError, match="token bucket"):
        CallerLimits(rate, burst)


def test_each_caller_has_its_own_bucket():
    clock = FakeClock()
    limits = CallerLimits(rate_per_s=1.0, burst=2, clock=clock)
    for _ in range(2):
        assert limits.wait(b"addr:10.0.0.1") == 0.0
        limits.charge(b"addr:10.0.0.1", 1)
    assert limits.wait(b"addr:10.0.0.1") == pytest.approx(1.0)
    assert limits.wait(b"addr:10.0.0.2") == 0.0  # another caller is not slowed down
    clock.advance(1.0)
    assert limits.wait(b"addr:10.0.0.1") == 0.0


def test_a_batch_costs_its_texts():
    clock = FakeClock()
    limits = CallerLimits(rate_per_s=10.0, burst=10, clock=clock)
    assert limits.wait(b"c") == 0.0
    limits.charge(b"c", 10)
    assert limits.wait(b"c") == pytest.approx(0.1)


def test_a_flood_of_callers_costs_bounded_memory_and_forgets_the_least_recently_seen():
    clock = FakeClock()
    limits = CallerLimits(rate_per_s=1.0, burst=1, clock=clock, max_callers=3)
    limits.charge(b"a", 1)
    for name in (b"b", b"c"):
        limits.charge(name, 1)
    limits.wait(b"a")  # a seen again: b is now the oldest
    limits.charge(b"d", 1)
    assert len(limits) == 3
    assert limits.wait(b"a") == pytest.approx(1.0)  # still remembered, still empty
    assert limits.wait(b"b") == 0.0  # forgotten: a new, full bucket
    for k in range(1000):
        limits.wait(f"addr:{k}".encode())
    assert len(limits) == 3


def test_texts_enter_while_they_fit_and_a_large_batch_goes_alone():
    gate = InFlight(10)
    assert gate.enter(6)
    assert not gate.enter(5)  # 11 > 10: refused, nothing taken
    assert gate.texts == 6
    assert gate.enter(4)
    assert not gate.enter(1)
    gate.leave(6)
    gate.leave(4)
    assert gate.texts == 0
    assert gate.enter(50)  # larger than the limit, but nothing else in flight
    assert not gate.enter(1)
    gate.leave(50)
    with pytest.raises(ValueError, match="at least 1"):
        InFlight(0)


@pytest.mark.parametrize(("seconds", "header"), [(0.0, 1), (0.001, 1), (1.0, 1), (1.01, 2), (29.5, 30)])
def test_retry_after_is_whole_seconds_and_at_least_one(seconds, header):
    assert retry_after(seconds) == header


def test_a_caller_is_the_token_holder_else_the_client_address():
    assert caller_key(True, ("10.0.0.1", 5555)) == b"token"
    assert caller_key(False, ("10.0.0.1", 5555)) == b"addr:10.0.0.1"
    assert caller_key(False, ("10.0.0.1", 6666)) == caller_key(False, ["10.0.0.1", 1])  # the port is not who
    assert caller_key(False, None) == b"addr:unknown"
