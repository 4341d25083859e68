"""Memory probe for `benchmarks/serve_load.py --probe`: on PYTHONPATH of the `llora serve` process only.

Every ``LLORA_MEMPROBE_EVERY`` seconds (default 10) a daemon thread appends one JSON line to ``LLORA_MEMPROBE``:
``unix`` (time), ``rss_kib`` (VmRSS), ``malloc_used_kib`` / ``malloc_free_kib`` (glibc ``mallinfo2``: bytes
in use by malloc, including mmapped chunks / free bytes malloc holds without returning them), ``sqlite_kib``
(``sqlite3_memory_used``: page caches and statements of every SQLite connection), ``py_blocks``
(``sys.getallocatedblocks``: live objects on Python's allocator) and ``threads``. Read-only: it frees nothing, so
the server measured is the server shipped. Does nothing in any other process or without ``LLORA_MEMPROBE``.
"""

import os
import sys

if os.environ.get("LLORA_MEMPROBE") and "serve" in sys.argv:
    import ctypes
    import json
    import threading
    import time

    class _Mallinfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                   "fsmblks", "uordblks", "fordblks", "keepcost")]

    def _probe(path: str, every: float) -> None:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _Mallinfo2
        sqlite = ctypes.CDLL("libsqlite3.so.0")
        sqlite.sqlite3_memory_used.restype = ctypes.c_int64
        while True:
            rss = next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmRSS:"))
            m = libc.mallinfo2()
            rec = {"unix": round(time.time(), 1), "rss_kib": rss,
                   "malloc_used_kib": (m.uordblks + m.hblkhd) // 1024, "malloc_free_kib": m.fordblks // 1024,
                   "sqlite_kib": sqlite.sqlite3_memory_used() // 1024, "py_blocks": sys.getallocatedblocks(),
                   "threads": len(os.listdir("/proc/self/task"))}
            with open(path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            time.sleep(every)

    threading.Thread(target=_probe, args=(os.environ["LLORA_MEMPROBE"],
                                          float(os.environ.get("LLORA_MEMPROBE_EVERY", "10"))),
                     name="llora-memprobe", daemon=True).start()
