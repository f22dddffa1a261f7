"""Overlapped steps: the same results in the same order, steps of consecutive items at once, bounded items in
flight, the first error raised."""

from __future__ import annotations

import threading
import time

import pytest

from fineinstructions.executors.overlap import pipelined


def test_results_match_the_plain_loop_in_order():
    steps = [lambda x: x + 1, lambda x: x * 10, lambda x: -x]
    plain = list(pipelined(range(20), steps, overlap=False))
    overlapped = list(pipelined(range(20), steps, overlap=True))
    assert overlapped == plain == [(i, -(i + 1) * 10) for i in range(20)]


def test_the_first_step_of_the_next_item_runs_while_the_second_step_runs():
    second_started = threading.Event()
    overlapped = []

    def first(item: int) -> int:
        if item == 1:  # item 1's first step waits until item 0's second step has begun
            overlapped.append(second_started.wait(timeout=5))
        return item

    def second(item: int) -> int:
        second_started.set()
        time.sleep(0.05)
        return item

    assert [item for item, _ in pipelined(range(3), [first, second])] == [0, 1, 2]
    assert overlapped == [True]


def test_at_most_depth_items_are_in_flight():
    drawn: list[int] = []
    yielded: list[int] = []

    def items():
        for i in range(10):
            drawn.append(i)
            yield i

    for item, _ in pipelined(items(), [lambda x: x, lambda x: x], depth=3):
        assert len(drawn) - len(yielded) <= 3
        yielded.append(item)
    assert yielded == list(range(10))


def test_an_error_in_a_later_step_is_raised_and_stops_the_rest():
    calls: list[int] = []

    def fails_on_two(item: int) -> int:
        if item == 2:
            raise ValueError("bad item 2")
        return item

    def slow_first(item: int) -> int:
        calls.append(item)
        time.sleep(0.01)
        return item

    got = []
    with pytest.raises(ValueError, match="bad item 2"):
        for item, _ in pipelined(range(100), [slow_first, fails_on_two], depth=3):
            got.append(item)
    assert got == [0, 1]
    assert len(calls) < 10  # the items after the failure were never all drawn
