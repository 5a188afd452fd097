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
    model calls, large bodies or answers). It costs 1-15 ms, never per small request.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from collections.abc import Callable

MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024
M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)

_libc = ctypes.util.find_library("c")
_glibc = ctypes.CDLL(_libc) if _libc else None
_malloc_trim: Callable[[int], int] | None = getattr(_glibc, "malloc_trim", None)
_mallopt: Callable[[int, int], int] | None = getattr(_glibc, "mallopt", None)


def map_large_buffers() -> None:
    """Buffers over MMAP_THRESHOLD_BYTES get their own mapping, given back when freed."""
    if _mallopt is not None and _malloc_trim is not None:  # both: glibc, not musl's stubs
        _mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def give_back() -> float:
    """Returns free heap memory to the OS; the seconds it took (0 where there is no glibc)."""
    if _malloc_trim is None:
        return 0.0
    started = time.perf_counter()
    _malloc_trim(0)
    return time.perf_counter() - started
