"""Handing freed memory back to the operating system.

glibc keeps what a process frees for the next allocation: measured, one /embed of 200 x 19,900
characters left the server at 620-820 MiB (193 at start) until some later large answer happened
to trim, and a 30-minute soak wandered between 260 and 998 MiB between large requests. Two
glibc settings fix it (without glibc, musl or macOS, both do nothing):
  - buffers over `MMAP_THRESHOLD_BYTES` are mapped on their own and unmapped when freed. glibc
    would raise that threshold after each large free (up to 32 MiB), so that the next large
    buffers come from its heap and stay; a fixed threshold stops that. ORT's buffers of a long
    call are the large ones (its own arena is off, backend.py);
  - `malloc_trim(0)` returns the heap's free pages after work that took hundreds of MiB (long
    model calls, large answers, and a burst once the queue is idle: batcher.py). It costs
    1-15 ms and holds glibc's locks meanwhile, so it never runs per request.
The price, measured on an AVX2 EPYC: transient buffers over 4 MiB are mapped and faulted in
each time. Bodies of 10^6 integers (413 each, the parser's arrays are the large buffers) were
answered at 20-25 a second instead of 38-40, /health p99 116-151 ms instead of 73-88 under them.
A threshold of 32 MiB won little of that back (30 a second, 109 ms) and doubled a long call's
peak (32 x 512: 1,705 MiB).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024
# free memory at the heap's top kept for reuse: fixing the mmap threshold also fixes this one
# at its 128 KiB default, which would shrink and regrow the heap around every large request
TRIM_THRESHOLD_BYTES = 16 * 1024 * 1024
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)

_libc = ctypes.util.find_library("c")
_glibc = ctypes.CDLL(_libc) if _libc else None
_malloc_trim: Callable[[int], int] | None = getattr(_glibc, "malloc_trim", None)
_mallopt: Callable[[int, int], int] | None = getattr(_glibc, "mallopt", None)


def map_large_buffers() -> None:
    """Buffers over MMAP_THRESHOLD_BYTES get their own mapping, given back when freed."""
    if _mallopt is not None and _malloc_trim is not None:  # both: glibc, not musl's stubs
        _mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        _mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)


def give_back() -> None:
    """Returns free heap memory to the OS (nothing where there is no glibc)."""
    if _malloc_trim is not None:
        _malloc_trim(0)
