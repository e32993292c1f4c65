"""Tests for appliance.kube.ratelimit: token bucket arithmetic and the trio limiter."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from appliance.kube.ratelimit import RateLimiter, TokenBucket


def test_burst_is_free() -> None:
    """The first `burst` reservations at one instant need no wait."""
    bucket = TokenBucket(qps=10, burst=3, now=0.0)
    assert [0.0, 0.0, 0.0] == [bucket.reserve(0.0) for _ in range(3)]


def test_debt_queues_callers_in_order() -> None:
    """Past the burst, each caller waits one more 1/qps than the previous one."""
    bucket = TokenBucket(qps=10, burst=2, now=0.0)
    waits = [bucket.reserve(0.0) for _ in range(5)]
    assert [0.0, 0.0, 0.1, 0.2, 0.3] == pytest.approx(waits)


def test_refill_over_time_is_capped_at_burst() -> None:
    """Idle time refills at qps but never beyond burst."""
    bucket = TokenBucket(qps=2, burst=4, now=0.0)
    for _ in range(4):
        bucket.reserve(0.0)
    assert 0.0 == bucket.reserve(0.5)  # one token earned
    assert 0.5 == pytest.approx(bucket.reserve(0.5))
    assert 0.0 == bucket.reserve(100.0)
    assert 3.0 == pytest.approx(bucket.tokens)


def test_clock_going_backwards_is_ignored() -> None:
    """An earlier timestamp does not refill or corrupt the bucket."""
    bucket = TokenBucket(qps=1, burst=1, now=10.0)
    bucket.reserve(10.0)
    assert 1.0 == pytest.approx(bucket.reserve(5.0))


def test_infinite_qps_never_waits() -> None:
    """qps=inf disables limiting."""
    bucket = TokenBucket(qps=math.inf, burst=1, now=0.0)
    assert all(bucket.reserve(0.0) == 0.0 for _ in range(100))


@pytest.mark.parametrize(("qps", "burst"), [(0, 1), (-1, 1), (1, 0)])
def test_rejects_bad_settings(qps: float, burst: int) -> None:
    """Non-positive qps or burst is refused at construction."""
    with pytest.raises(ValueError, match="must be"):
        RateLimiter(qps=qps, burst=burst)


async def test_limiter_sleeps_for_debt(autojump_clock: trio.testing.MockClock) -> None:
    """The limiter lets the burst through at once and then paces at qps on trio's clock."""
    limiter = RateLimiter(qps=2, burst=2)
    start = trio.current_time()
    await limiter.acquire()
    await limiter.acquire()
    assert start == trio.current_time()
    await limiter.acquire()
    assert 0.5 == pytest.approx(trio.current_time() - start)
