"""Running consecutive items through a chain of steps at once: step k of item i+1 while step k+1 of item i.

A rank's windows of shards go match -> instantiate -> judge -> filter. Run one after the other, the GPU
serving instantiate idles while judge, match and filter run; overlapped, each step has its own thread and
works through the items in order, so every engine keeps being fed. Each step still sees the items in their
order, so what it computes and commits is the same as without overlap.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


def pipelined(items: Iterable[T], steps: Sequence[Callable[[Any], Any]], overlap: bool = True,
              depth: int = 3) -> Generator[tuple[T, Any], None, None]:
    """(item, the last step's result) for each item, in order, each item passed through `steps` in order.

    With `overlap`, each step runs in its own thread and at most `depth` items are in flight (drawn from
    `items` but not yet yielded), so memory stays bounded however fast the first step is. The first error
    of any step is raised here; steps already running finish their item, the others are cancelled."""
    if not overlap:
        for item in items:
            value: Any = item
            for step in steps:
                value = step(value)
            yield item, value
        return
    pools = [ThreadPoolExecutor(1, thread_name_prefix=f"step-{k}") for k in range(len(steps))]
    in_flight: deque[tuple[T, Future[Any]]] = deque()
    try:
        for item in items:
            future: Future[Any] = pools[0].submit(steps[0], item)
            for pool, step in zip(pools[1:], steps[1:], strict=True):
                future = pool.submit(_after, step, future)
            in_flight.append((item, future))
            if len(in_flight) >= depth:
                first, done = in_flight.popleft()
                yield first, done.result()
        while in_flight:
            first, done = in_flight.popleft()
            yield first, done.result()
    finally:
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=True)


def _after(step: Callable[[Any], Any], previous: Future[Any]) -> Any:
    return step(previous.result())
