"""An ordered, bounded ``map`` across worker processes that a caller may abandon at any point without a hang.

Used for the CPU-bound parts of ``prepare`` (decoding pictures, drawing the embedded faces). Workers are forked,
so they start in milliseconds and inherit the imported modules; nothing here imports torch."""

from __future__ import annotations

import collections
import itertools
import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

Batch = TypeVar("Batch")
Result = TypeVar("Result")

WINDOW_PER_WORKER = 8  # batches in flight per worker: keeps cores busy while bounding queued bytes


class WorkerDied(Exception):
    """A worker process died (killed for memory, say); the message says what to do."""


def map_in_order(function: Callable[[Batch], Result], batches: Iterable[Batch], workers: int) -> Iterator[Result]:
    """``map(function, batches)`` across ``workers`` processes, in order, with a bounded window in flight.

    The window keeps the inputs (archive bytes, say) from piling up in a queue. Abandoning the iterator cancels
    the batches not yet started and waits for the running ones: killing a worker mid-reply, as
    ``multiprocessing.Pool.terminate`` does, can leave half a message in the result pipe and hang the reader
    forever. A worker that dies raises WorkerDied rather than hanging."""
    if workers <= 1:
        yield from map(function, batches)
        return
    in_flight: collections.deque[Future[Result]] = collections.deque()
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        try:
            for batch in batches:
                in_flight.append(pool.submit(function, batch))
                if len(in_flight) >= workers * WINDOW_PER_WORKER:
                    yield _result(in_flight.popleft())
            while in_flight:
                yield _result(in_flight.popleft())
        finally:
            for future in in_flight:
                future.cancel()


def chunked(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of ``size`` items (the last one shorter)."""
    items = iter(items)
    while batch := list(itertools.islice(items, size)):
        yield batch


def _result(future: Future[Result]) -> Result:
    try:
        return future.result()
    except BrokenProcessPool:
        raise WorkerDied("a worker process died (out of memory?): run again with --workers 1, or free some "
                         "memory") from None
