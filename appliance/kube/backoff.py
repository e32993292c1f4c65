"""Capped exponential backoff with jitter; pure arithmetic, the caller sleeps.

`Backoff` counts consecutive failures. Each `next_delay()` returns the delay for the
current attempt and advances; `reset()` after a success starts again from `initial`.
Jitter only shortens a delay (by up to `jitter` of it), so `maximum` is a hard cap and
replicas that failed together spread out instead of retrying in lockstep.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["Backoff", "capped_delay"]


def capped_delay(attempt: int, *, initial: float, maximum: float, factor: float) -> float:
    """The un-jittered delay of attempt `attempt` (0-based): initial * factor**attempt, capped."""
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    delay = initial
    for _ in range(attempt):
        delay *= factor
        if delay >= maximum:
            return maximum
    return min(delay, maximum)


@dataclass(slots=True)
class Backoff:
    """Delays for consecutive failures: 0.2 s, 0.4 s, ... up to 30 s, each minus random jitter."""

    initial: float = 0.2
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 0.2
    rng: random.Random = field(default_factory=random.Random, repr=False)
    attempt: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError("need 0 < initial <= maximum")
        if self.factor < 1:
            raise ValueError("factor must be >= 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")

    def next_delay(self) -> float:
        """Return the delay for this failure and count it."""
        base = capped_delay(
            self.attempt, initial=self.initial, maximum=self.maximum, factor=self.factor
        )
        self.attempt += 1
        return base * (1.0 - self.jitter * self.rng.random())

    def reset(self) -> None:
        """Forget past failures after a success."""
        self.attempt = 0
