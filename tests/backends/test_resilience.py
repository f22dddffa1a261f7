"""The AIMD concurrency limiter and the circuit breaker on their own: no network, no model."""

from __future__ import annotations

import asyncio

import pytest

from fineinstructions.backends.resilience import AdaptiveLimiter, BreakerState, CircuitBreaker, Signal


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_limiter_halves_on_overload_never_below_one_and_grows_back_by_one_per_window():
    async def scenario() -> list[int]:
        limiter = AdaptiveLimiter(8)
        seen = [limiter.limit]
        for _ in range(5):  # each overload comes from a request admitted after the previous decrease
            limiter.release(await limiter.acquire(), Signal.OVERLOAD)
            seen.append(limiter.limit)
        for _ in range(1 + 2 + 3):  # a window of successes (the current limit) adds one slot
            limiter.release(await limiter.acquire(), Signal.SUCCESS)
        seen.append(limiter.limit)
        for _ in range(100):
            limiter.release(await limiter.acquire(), Signal.SUCCESS)
        seen.append(limiter.limit)
        assert limiter.min_limit == 1 and limiter.decreases == 3 and limiter.in_flight == 0
        return seen

    assert asyncio.run(scenario()) == [8, 4, 2, 1, 1, 1, 4, 8]


def test_limiter_halves_once_for_requests_that_were_in_flight_together():
    async def scenario() -> None:
        limiter = AdaptiveLimiter(8)
        permits = [await limiter.acquire() for _ in range(8)]
        for permit in permits:  # eight 429s of one congestion event
            limiter.release(permit, Signal.OVERLOAD)
        assert limiter.limit == 4 and limiter.decreases == 1
        limiter.release(await limiter.acquire(), Signal.OVERLOAD)  # a new one after the decrease
        assert limiter.limit == 2

    asyncio.run(scenario())


def test_neutral_signals_do_not_move_the_limit():
    async def scenario() -> None:
        limiter = AdaptiveLimiter(4, initial=2)
        for _ in range(10):
            limiter.release(await limiter.acquire(), Signal.NEUTRAL)
        assert limiter.limit == 2 and limiter.stats()["concurrency"] == 2.0

    asyncio.run(scenario())


def test_limiter_bounds_tasks_in_flight_and_admits_waiters_in_order():
    async def scenario() -> tuple[int, list[int]]:
        limiter = AdaptiveLimiter(3)
        peak = 0
        order: list[int] = []

        async def task(i: int) -> None:
            nonlocal peak
            permit = await limiter.acquire()
            order.append(i)
            peak = max(peak, limiter.in_flight)
            await asyncio.sleep(0.001)
            limiter.release(permit, Signal.NEUTRAL)

        await asyncio.gather(*(task(i) for i in range(12)))
        assert limiter.in_flight == 0
        return peak, order

    peak, order = asyncio.run(scenario())
    assert peak == 3 and order == list(range(12))


def test_lowered_limit_holds_back_waiters_until_enough_slots_are_free():
    async def scenario() -> None:
        limiter = AdaptiveLimiter(4)
        permits = [await limiter.acquire() for _ in range(4)]
        waiter = asyncio.ensure_future(limiter.acquire())
        limiter.release(permits[0], Signal.OVERLOAD)  # limit 2, three still in flight
        await asyncio.sleep(0)
        assert not waiter.done()
        limiter.release(permits[1], Signal.NEUTRAL)  # two in flight: still full
        await asyncio.sleep(0)
        assert not waiter.done()
        limiter.release(permits[2], Signal.NEUTRAL)
        await asyncio.sleep(0)
        assert waiter.done() and limiter.in_flight == 2

    asyncio.run(scenario())


def test_cancelled_waiter_does_not_leak_a_slot():
    async def scenario() -> None:
        limiter = AdaptiveLimiter(1)
        permit = await limiter.acquire()
        waiter = asyncio.ensure_future(limiter.acquire())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        limiter.release(permit, Signal.SUCCESS)
        assert limiter.in_flight == 0
        await asyncio.wait_for(limiter.acquire(), timeout=1)

    asyncio.run(scenario())


def test_breaker_opens_after_consecutive_failures_and_fails_fast():
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, cooldown_s=10, clock=clock)
    breaker.record_failure("x")
    breaker.record_success()  # a success in between resets the run
    for _ in range(2):
        breaker.record_failure("http_503")
        assert breaker.allow() and breaker.state is BreakerState.CLOSED
    breaker.record_failure("http_503")
    assert breaker.state is BreakerState.OPEN and breaker.opens == 1
    assert not breaker.allow() and not breaker.allow()
    assert breaker.rejections == 2 and breaker.retry_in() == 10
    clock.now += 4
    assert not breaker.allow() and breaker.retry_in() == 6


def test_breaker_half_open_lets_one_probe_through_and_closes_on_success():
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=5, clock=clock)
    breaker.record_failure("ConnectError")
    clock.now += 5
    assert breaker.allow() and breaker.state is BreakerState.HALF_OPEN and breaker.probing
    assert not breaker.allow()  # only one probe at a time
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and breaker.recoveries == 1 and breaker.allow()
    assert breaker.stats() == {"breaker_open": 0.0, "breaker_opens": 1.0, "breaker_recoveries": 1.0,
                               "breaker_rejections": 0.0, "breaker_probes": 1.0}


def test_failed_probe_reopens_for_another_cooldown():
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=2, cooldown_s=5, clock=clock)
    breaker.record_failure()
    breaker.record_failure("ReadTimeout")
    clock.now += 6
    assert breaker.allow()
    breaker.record_failure("ReadTimeout")
    assert breaker.state is BreakerState.OPEN and breaker.opens == 2 and not breaker.allow()
    assert breaker.last_error == "ReadTimeout"
    clock.now += 5
    assert breaker.allow()


def test_released_probe_lets_the_next_request_probe():
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=1, clock=clock)
    breaker.record_failure()
    clock.now += 1
    assert breaker.allow() and not breaker.allow()
    breaker.release_probe()
    assert breaker.allow() and breaker.probes == 2
    breaker.reset()
    assert breaker.state is BreakerState.CLOSED and breaker.consecutive_failures == 0


def test_late_success_of_a_request_sent_before_the_breaker_opened_closes_it():
    breaker = CircuitBreaker(failure_threshold=2, cooldown_s=60, clock=FakeClock())
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and breaker.recoveries == 1 and breaker.allow()
