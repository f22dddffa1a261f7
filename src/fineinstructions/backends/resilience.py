"""Two small guards for clients of a remote engine: an adaptive concurrency limit and a circuit breaker.

`AdaptiveLimiter` keeps the number of requests in flight where the server copes (AIMD, as TCP does with
its window): one more slot after a window's worth of successes, half the slots when the server signals
overload (429, 5xx, a timeout), never fewer than one. `CircuitBreaker` stops calls to a server that keeps
failing: after `failure_threshold` consecutive failures it opens and turns requests away without a network
call; after `cooldown_s` it lets one probe through and closes again when the probe succeeds.

Both are plain state machines: the limiter is used from one asyncio event loop at a time (a backend runs
each batch in its own loop, one batch after another), the breaker needs no loop at all.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from enum import Enum


class Signal(Enum):
    """What one finished request says about the server's load."""

    SUCCESS = "success"  # answered: may grow the limit
    OVERLOAD = "overload"  # 429, 5xx, timeout, dropped connection: halve the limit
    NEUTRAL = "neutral"  # says nothing about load (refused connection, a bad body, a turned-away attempt)


class AdaptiveLimiter:
    """AIMD concurrency limit for asyncio tasks: `permit = await acquire()`, then `release(permit, signal)`."""

    def __init__(self, max_concurrency: int, initial: int | None = None, increase_after: int | None = None):
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.max_concurrency = max_concurrency
        self.limit = max(1, min(max_concurrency, initial or max_concurrency))
        # Successes needed for one more slot; None: the current limit (one "window", as in TCP).
        self.increase_after = increase_after
        self.in_flight = 0
        self.min_limit = self.limit
        self.decreases = 0
        self.increases = 0
        self._epoch = 0  # bumped on every decrease
        self._successes = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> int:
        """Wait for a free slot; returns a permit to hand back to `release`."""
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
            return self._epoch
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # the slot was granted just before the cancel
                self.in_flight -= 1
                self._wake()
            else:
                self._waiters.remove(waiter)
            raise
        return self._epoch

    def release(self, permit: int, signal: Signal) -> None:
        """Free a slot and adapt the limit to what the request observed."""
        self.in_flight -= 1
        if signal is Signal.SUCCESS:
            self._successes += 1
            if self._successes >= (self.increase_after or self.limit) and self.limit < self.max_concurrency:
                self.limit += 1
                self.increases += 1
                self._successes = 0
        elif signal is Signal.OVERLOAD:
            self._successes = 0
            # Requests admitted before the last decrease report the same congestion: halve once per window.
            if permit == self._epoch and self.limit > 1:
                self.limit //= 2
                self.min_limit = min(self.min_limit, self.limit)
                self.decreases += 1
                self._epoch += 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)

    def stats(self) -> dict[str, float]:
        return {"concurrency": float(self.limit), "concurrency_min": float(self.min_limit),
                "concurrency_decreases": float(self.decreases), "concurrency_increases": float(self.increases)}


class BreakerState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Closed -> open after `failure_threshold` consecutive failures -> half-open after `cooldown_s`
    (one probe goes through) -> closed when the probe (or a request sent before the breaker opened)
    succeeds, open again when the probe fails."""

    def __init__(self, failure_threshold: int = 5, cooldown_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic):
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self.last_error = ""
        self.opens = 0
        self.recoveries = 0
        self.rejections = 0
        self.probes = 0
        self._opened_at = 0.0
        self._probe_out = False

    @property
    def probing(self) -> bool:
        """True while a half-open probe is out: its verdict decides whether the others may go."""
        return self.state is BreakerState.HALF_OPEN and self._probe_out

    def allow(self) -> bool:
        """May a request go out now? The first request after the cool-down is the probe."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if self.clock() - self._opened_at < self.cooldown_s:
                self.rejections += 1
                return False
            self.state = BreakerState.HALF_OPEN
        if self._probe_out:
            return False
        self._probe_out = True
        self.probes += 1
        return True

    def retry_in(self) -> float:
        """Seconds until a probe will be let through (0 unless open)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self.cooldown_s - (self.clock() - self._opened_at))

    def record_success(self) -> None:
        """The server answered (any answer from a live server counts, a 429 or a 400 too). A success closes an
        open breaker too: a request sent before it opened may be the first to see the server back."""
        if self.state is not BreakerState.CLOSED:
            self.recoveries += 1
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self._probe_out = False

    def record_failure(self, error: str = "") -> None:
        """The server failed (no connection, a timeout, a 5xx, a broken body)."""
        self.consecutive_failures += 1
        self.last_error = error or self.last_error
        if self.state is BreakerState.HALF_OPEN or (
            self.state is BreakerState.CLOSED and self.consecutive_failures >= self.failure_threshold
        ):
            self.state = BreakerState.OPEN
            self._opened_at = self.clock()
            self.opens += 1
        self._probe_out = False

    def release_probe(self) -> None:
        """A probe ended without a verdict (e.g. cancelled): let the next request probe instead."""
        self._probe_out = False

    def reset(self) -> None:
        """Forget all failures (e.g. after the server was restarted)."""
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self._probe_out = False

    def stats(self) -> dict[str, float]:
        return {"breaker_open": float(self.state is not BreakerState.CLOSED), "breaker_opens": float(self.opens),
                "breaker_recoveries": float(self.recoveries), "breaker_rejections": float(self.rejections),
                "breaker_probes": float(self.probes)}
