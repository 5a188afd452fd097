"""Threads that do the heavy work (model calls, tokenizing, parsing and writing big bodies) run
below the event loop's CPU priority, so that the loop, which answers the probes and hands work
out, gets a core as soon as it wakes. Measured under 4 clients repeating 200 x 19,900-character
/embed requests on 2 cores: the GIL was held 17% of the time, yet /health waited up to 150 ms,
for a core (see BENCHMARKS.md, "Event loop under large requests"). Lowering a thread's priority
needs no privilege; where the OS refuses, the thread runs as it would have."""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor

WORKER_NICENESS = 5  # CPU share: a niceness 5 thread gets ~1/3 of a niceness 0 one's, contended


def lower_priority() -> None:
    """Raises the calling thread's niceness (on Linux niceness is per thread)."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux, or refused
        os.nice(WORKER_NICENESS)


def worker_pool(max_workers: int | None, name: str) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(
        max_workers=max_workers, thread_name_prefix=name, initializer=lower_priority
    )
