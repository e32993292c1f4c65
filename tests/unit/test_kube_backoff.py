"""Tests for appliance.kube.backoff: capped exponential delays with jitter."""

from __future__ import annotations

import random

import pytest

from appliance.kube.backoff import Backoff, capped_delay


def test_capped_delay_doubles_then_caps() -> None:
    """Delays double from `initial` and stop growing at `maximum`."""
    delays = [capped_delay(n, initial=0.2, maximum=30.0, factor=2.0) for n in range(10)]
    assert [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0] == pytest.approx(delays)


def test_capped_delay_large_attempt() -> None:
    """A huge attempt count neither overflows nor exceeds the cap."""
    assert 30.0 == capped_delay(10_000, initial=0.2, maximum=30.0, factor=2.0)


def test_no_jitter_sequence_and_reset() -> None:
    """Without jitter the delays are exact, and reset() starts over."""
    backoff = Backoff(jitter=0.0)
    assert [0.2, 0.4, 0.8] == pytest.approx([backoff.next_delay() for _ in range(3)])
    backoff.reset()
    assert 0.2 == pytest.approx(backoff.next_delay())


def test_jitter_only_shortens() -> None:
    """Jittered delays stay within (1 - jitter) x base and the cap."""
    backoff = Backoff(jitter=0.2, rng=random.Random(7))
    for attempt in range(40):
        base = capped_delay(attempt, initial=0.2, maximum=30.0, factor=2.0)
        delay = backoff.next_delay()
        assert base * 0.8 <= delay <= base


@pytest.mark.parametrize(
    "kwargs",
    [{"initial": 0}, {"initial": 5, "maximum": 1}, {"factor": 0.5}, {"jitter": 1.0}],
)
def test_rejects_bad_settings(kwargs: dict[str, float]) -> None:
    """Settings that would give zero, shrinking or negative delays are refused."""
    with pytest.raises(ValueError, match=r"must|need"):
        Backoff(**kwargs)  # type: ignore[arg-type]
