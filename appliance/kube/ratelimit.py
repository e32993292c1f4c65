"""Client-side rate limiting of API calls: a token bucket, as client-go's `--kube-api-qps/burst`.

`TokenBucket` is pure arithmetic on explicit timestamps. `RateLimiter` reads trio's clock
and sleeps. A call takes a token immediately and, if the bucket is in debt, sleeps until
that token has been earned; concurrent callers are therefore served in arrival order and
nobody polls. A caller cancelled while waiting does not give its token back (the debt is
at most one token per cancelled call, repaid within 1/qps seconds).
"""

from __future__ import annotations

import math

import trio

__all__ = ["RateLimiter", "TokenBucket"]


class TokenBucket:
    """Tokens refill at `qps` per second up to `burst`; `reserve()` may drive them negative."""

    __slots__ = ("_burst", "_last", "_qps", "_tokens")

    def __init__(self, *, qps: float, burst: int, now: float) -> None:
        if not qps > 0:
            raise ValueError("qps must be > 0 (math.inf disables limiting)")
        if burst < 1:
            raise ValueError("burst must be >= 1")
        self._qps = qps
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last = now

    @property
    def tokens(self) -> float:
        """Tokens left at the last update; negative while callers wait."""
        return self._tokens

    def reserve(self, now: float) -> float:
        """Take one token at time `now`; return how long to wait before using it (0 if none)."""
        if math.isinf(self._qps):
            return 0.0
        if now > self._last:
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._qps)
            self._last = now
        self._tokens -= 1.0
        if self._tokens >= 0:
            return 0.0
        return -self._tokens / self._qps


class RateLimiter:
    """A `TokenBucket` on trio's clock; every API call awaits `acquire()` once."""

    __slots__ = ("_bucket", "_burst", "_qps")

    def __init__(self, *, qps: float, burst: int) -> None:
        # The bucket is created on first use: trio's clock only exists inside trio.run.
        TokenBucket(qps=qps, burst=burst, now=0.0)  # validate now, not on first call
        self._qps = qps
        self._burst = burst
        self._bucket: TokenBucket | None = None

    async def acquire(self) -> None:
        """Wait until one more call is allowed. Always a checkpoint."""
        now = trio.current_time()
        if self._bucket is None:
            self._bucket = TokenBucket(qps=self._qps, burst=self._burst, now=now)
        delay = self._bucket.reserve(now)
        if delay > 0:
            await trio.sleep(delay)
        else:
            await trio.lowlevel.checkpoint()
