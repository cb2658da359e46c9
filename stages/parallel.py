"""An ordered, bounded ``map`` across worker processes that a caller may abandon at any point without a hang.

Used for the CPU-bound parts of ``prepare`` (decoding pictures, drawing the embedded faces). Workers are forked,
so they start in milliseconds and inherit the imported modules; nothing here imports torch.

Workers never outlive the process that started them: a parent killed with ``kill -9`` cannot shut its pool
down, and its workers would otherwise sit forever in a write to a result pipe nobody reads."""

from __future__ import annotations

import collections
import contextlib
import ctypes
import itertools
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

Batch = TypeVar("Batch")
Result = TypeVar("Result")

WINDOW_PER_WORKER = 8  # batches in flight per worker: keeps cores busy while bounding queued bytes
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_HELD = (signal.SIGINT, signal.SIGTERM)  # what interrupts_held holds back
_PARENT_POLL_SECONDS = 0.5  # where there is no prctl: how often a worker checks that its parent still lives


class WorkerDied(Exception):
    """A worker process died (killed for memory, say); the message says what to do."""


def map_in_order(function: Callable[[Batch], Result], batches: Iterable[Batch], workers: int) -> Iterator[Result]:
    """``map(function, batches)`` across ``workers`` processes, in order, with a bounded window in flight.

    The window keeps the inputs (archive bytes, say) from piling up in a queue. Abandoning the iterator (closing
    it, or an interrupt) cancels the batches not yet started and waits for the running ones: killing a worker
    mid-reply, as ``multiprocessing.Pool.terminate`` does, can leave half a message in the result pipe and hang
    the reader forever. A worker that dies raises WorkerDied rather than hanging."""
    if workers <= 1:
        yield from map(function, batches)
        return
    in_flight: collections.deque[Future[Result]] = collections.deque()
    context = multiprocessing.get_context("fork")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=die_with_parent, initargs=(os.getpid(),))
    try:
        for batch in batches:
            with interrupts_held():
                in_flight.append(pool.submit(function, batch))
            if len(in_flight) >= workers * WINDOW_PER_WORKER:
                yield _result(in_flight.popleft())
        while in_flight:
            yield _result(in_flight.popleft())
    finally:
        with interrupts_held():
            pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then hand the first one to the handler that was in place.

    The pool's own bookkeeping is not safe to interrupt: a KeyboardInterrupt raised half-way through ``submit``
    (which forks the workers) can leave a worker the pool does not know of, and the interpreter's exit then waits
    for it forever. Waiting for a result is safe to interrupt, so it is not held: Ctrl-C never waits on a slow
    file. Handlers can only be swapped on the main thread; elsewhere the block runs unheld."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous: dict[int, object] = {}
    try:
        for number in _HELD:
            previous[number] = signal.signal(number, lambda number, frame: caught.append(number))
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if caught:
            signal.raise_signal(caught[0])


def die_with_parent(parent: int) -> None:
    """Run in each worker as it starts: end this process as soon as ``parent`` (the pid that forked it) is gone.

    On Linux the kernel sends SIGKILL when the parent dies (prctl PR_SET_PDEATHSIG); the parent may already be
    dead by the time that is set, hence the check after it. Elsewhere a daemon thread polls the parent pid."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
            if os.getppid() != parent:
                os._exit(1)
            return
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(_PARENT_POLL_SECONDS)
    os._exit(1)


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
