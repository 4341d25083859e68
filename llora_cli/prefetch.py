"""Start-up prefetch for `llora run` on the llama.cpp engine: the deployed GGUF base starts loading before the CLI
and the catalog's ORM are imported.

`llora run` spends ~0.45 s importing typer, SQLAlchemy and SQLModel (pure Python, holding the interpreter lock)
before it knows which model to load; llama.cpp then needs ~0.3 s to import and map the model, most of it in C
without the lock. The console entry (cli/entry.py) calls ``start(argv)`` first: for a plain `llora run` on a SQLite
catalog, a thread reads the one deployed base's id with the standard library's sqlite3 (read-only, no ORM), and if
that base is a GGUF file, imports llama_cpp and loads it while the main thread imports the rest.

It lives outside ``llora_cli.engine`` because importing that package imports the catalog. It is a hint, never the
truth: the engine still resolves the deployment through the store (rules R5/R6, the
deployed state) and takes the prefetched model only for the exact file and parameters it would load itself
(``take``); anything else (another base, ``--base``, ``--engine transformers``, PostgreSQL, no llama_cpp, any error
here) leaves the engine to load as usual. Only the standard library is imported at module level.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

GGUF_NAME = "model.gguf"  # modelfiles.GGUF_NAME; this module must not import the model path's modules
N_CTX, N_BATCH = 4096, 512  # LlamaCppEngine's defaults: a prefetched model is used only with these

_thread: threading.Thread | None = None
_loaded: dict[str, object] = {}


def _home() -> Path | None:
    """``$LLORA_HOME`` (store.db.default_home's first choice); the platform default is left to the store."""
    env = os.environ.get("LLORA_HOME")
    return Path(env).expanduser().resolve() if env else None


def wanted(argv: list[str]) -> bool:
    """Whether ``argv`` (sys.argv) is a `llora run` that may use llama.cpp on the single deployed base."""
    args = argv[1:]
    if not args or args[0] != "run" or os.environ.get("LLORA_DB_URL"):
        return False
    for i, a in enumerate(args):
        if a in ("--base", "--help", "-h") or a.startswith("--base="):
            return False
        if a == "--engine" and i + 1 < len(args) and args[i + 1] == "transformers":
            return False
        if a == "--engine=transformers":
            return False
    return True


def start(argv: list[str]) -> None:
    """Begin loading the deployed GGUF base in a background thread when ``argv`` is a `llora run` that may use it."""
    global _thread
    home = _home()
    if _thread is not None or home is None or not wanted(argv):
        return
    _thread = threading.Thread(target=_load, args=(home,), name="llora-prefetch", daemon=True)
    _thread.start()


def _load(home: Path) -> None:
    try:
        import sqlite3

        db = home / "catalog.db"
        if not db.is_file():
            return
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.5)
        try:
            rows = con.execute("SELECT id FROM artifact WHERE state = 'deployed' "
                               "AND kind IN ('base', 'merged', 'compressed')").fetchall()
        finally:
            con.close()
        if len(rows) != 1:
            return
        path = home / "artifacts" / rows[0][0] / GGUF_NAME  # files.Layout.artifact_dir
        if not path.is_file():
            return
        import llama_cpp

        _loaded[str(path)] = llama_cpp.Llama(model_path=str(path), n_ctx=N_CTX, n_threads=os.cpu_count() or 1,
                                             n_batch=N_BATCH, verbose=False, logits_all=False)
    except Exception:  # noqa: BLE001 - a hint only: the engine loads the model itself
        _loaded.clear()


def take(path: Path, *, n_ctx: int, threads: int | None):
    """The prefetched ``llama_cpp.Llama`` of ``path`` when it was loaded with these parameters, else None.
    Waits for the prefetch thread to finish (it was started first, so most of its work is already done)."""
    if _thread is None:
        return None
    _thread.join()
    if n_ctx != N_CTX or (threads or os.cpu_count() or 1) != (os.cpu_count() or 1):
        return None
    return _loaded.pop(str(path), None)
