"""engine/heap.py: the server's model thread hands freed heap pages back to the OS (malloc_trim), at most every 30 s."""

from __future__ import annotations

import platform
import time

import pytest

from llora_cli.engine.heap import TRIM_EVERY_S, Trimmer


def rss_mib() -> float:
    return next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmRSS:")) / 1024


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_trim_returns_freed_pages_that_malloc_kept():
    blocks = [bytearray(1000) for _ in range(100_000)]  # ~100 MB of malloc'd buffers
    del blocks[:90_000]  # freed, but below live blocks: malloc keeps the pages
    kept = rss_mib()
    trimmer = Trimmer(every_s=0)
    assert trimmer.maybe() and trimmer.trims == 1
    assert rss_mib() < kept - 50  # most of the ~88 MB freed went back to the OS
    del blocks


def test_trims_at_most_once_per_interval():
    trimmer = Trimmer()
    assert trimmer.every_s == TRIM_EVERY_S == 30.0
    assert not trimmer.maybe() and trimmer.trims == 0  # the interval starts when the server starts
    trimmer.last = time.monotonic() - 31
    assert trimmer.maybe() == (trimmer.fn is not None)
    assert not trimmer.maybe()  # just trimmed
    trimmer.fn = None  # a C library without malloc_trim: nothing happens, nothing fails
    trimmer.last = 0.0
    assert not trimmer.maybe()
