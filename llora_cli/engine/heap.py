"""Giving freed heap memory back to the OS in a long-running server (``llora serve``).

glibc's malloc keeps memory that was freed inside its heaps (and the per-thread arenas the HTTP worker threads
allocate in) instead of returning it; under a steady load of requests that free memory grows slowly as the heaps
fragment (benchmarks/serve_load.py --probe measured it: docs/reliability.md). ``malloc_trim(0)`` (glibc >= 2.8)
returns every whole free page of every arena to the OS (``madvise(MADV_DONTNEED)``) without moving live data.
The model thread calls ``Trimmer.maybe()`` between batches; it trims at most once per ``every_s`` seconds.
On a C library without ``malloc_trim`` (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time

TRIM_EVERY_S = 30.0


def _malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


class Trimmer:
    """``maybe()``: ``malloc_trim(0)`` when ``every_s`` seconds passed since the last trim; ``trims`` counts them."""

    def __init__(self, every_s: float = TRIM_EVERY_S) -> None:
        self.every_s = every_s
        self.fn = _malloc_trim()
        self.last = time.monotonic()
        self.trims = 0

    def maybe(self) -> bool:
        """Trim if due; True when it trimmed. Costs a few milliseconds (a walk over the heaps' free lists)."""
        if self.fn is None or time.monotonic() - self.last < self.every_s:
            return False
        self.fn(0)
        self.last = time.monotonic()
        self.trims += 1
        return True
