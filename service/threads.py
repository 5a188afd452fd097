"""Threads that do the heavy work (model calls, tokenizing, parsing and writing big bodies) run
below the event loop's CPU priority, so that the loop, which answers the probes and hands work
out, gets a core as soon as it wakes. Measured under 4 clients repeating 200 x 19,900-character
/embed requests on 2 cores: the GIL was held 17% of the time, yet /health waited up to 150 ms,
for a core (see BENCHMARKS.md, "Event loop under large requests"). Lowering a thread's priority
needs no privilege; where the OS refuses, the thread runs as it would have."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import itertools
import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger("bertserve")

WORKER_NICENESS = 5  # CPU share: a niceness 5 thread gets ~1/3 of a niceness 0 one's, contended


def lower_priority() -> None:
    """Raises the calling thread's niceness (on Linux niceness is per thread)."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux, or refused
        os.nice(WORKER_NICENESS)


def worker_pool(max_workers: int | None, name: str) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(
        max_workers=max_workers, thread_name_prefix=name, initializer=lower_priority
    )


class ModelThreads:
    """The model threads, shared by every model served. Each model's batcher hands over one
    call at a time (its next call is formed once a thread has taken the last, so sequences can
    still join it); a free thread takes the waiting call of the model with the fewest calls
    running, and of those the one served longest ago. So a model with a deep queue cannot
    starve another: a single request to an idle model waits for at most the calls already
    running, never for the busy model's next one. Heads, warm-up and memory trims (`run`,
    `submit`) go first, in arrival order: they are short, and finish requests."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._ready = threading.Condition()
        self._jobs: deque[Callable[[], object]] = deque()
        self._calls: dict[object, deque[Callable[[], None]]] = {}
        self._running: dict[object, int] = {}
        self._served: dict[object, int] = {}  # owner -> the turn its last call was taken in
        self._turns = itertools.count()
        self._closing = False
        self._threads = [
            threading.Thread(target=self._work, name=f"bertserve-model_{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def hand_off(self, owner: object, fn: Callable[..., None], *args: object) -> None:
        """Queues one model call of `owner` (its batcher); a thread runs fn(*args) in turn."""
        with self._ready:
            self._calls.setdefault(owner, deque()).append(functools.partial(fn, *args))
            self._running.setdefault(owner, 0)
            self._served.setdefault(owner, -1)
            self._ready.notify()

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """fn(*args) on a model thread, ahead of the model calls (heads, warm-up)."""
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def job() -> None:
            if done.set_running_or_notify_cancel():
                try:
                    done.set_result(fn(*args))
                except BaseException as exc:
                    done.set_exception(exc)

        self.submit(job)
        return await asyncio.wrap_future(done)

    def submit(self, fn: Callable[[], object]) -> None:
        """fn on a model thread, ahead of the model calls; nobody waits for it."""
        with self._ready:
            self._jobs.append(fn)
            self._ready.notify()

    async def shutdown(self) -> None:
        """Runs what is queued, then stops the threads."""
        with self._ready:
            self._closing = True
            self._ready.notify_all()

        def join() -> None:
            for thread in self._threads:
                thread.join()

        await asyncio.to_thread(join)

    def _next(self) -> tuple[object | None, Callable[[], object]] | None:
        """The job to run next, under the lock; None when there is none."""
        if self._jobs:
            return None, self._jobs.popleft()
        waiting = [owner for owner, calls in self._calls.items() if calls]
        if not waiting:
            return None
        owner = min(waiting, key=lambda o: (self._running[o], self._served[o]))
        self._served[owner] = next(self._turns)
        self._running[owner] += 1
        return owner, self._calls[owner].popleft()

    def _work(self) -> None:
        lower_priority()
        while True:
            with self._ready:
                while (picked := self._next()) is None and not self._closing:
                    self._ready.wait()
                if picked is None:  # closing, and nothing left to run
                    return
            owner, job = picked
            try:
                job()  # model calls and `run` jobs catch their own errors
            except Exception:
                log.exception("a model-thread job failed")
            finally:
                if owner is not None:
                    with self._ready:
                        self._running[owner] -= 1
