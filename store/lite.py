"""A light view of a SQLite catalog with the standard library's ``sqlite3``: what `llora run` needs to answer one
request (the deployment, its files, the request log), without importing the ORM.

Importing SQLAlchemy + SQLModel and the models costs ~0.75 s of interpreter time, more than llama.cpp needs to
load SmolLM2 and answer a short prompt; `llora run` on the llama.cpp engine takes this path instead
(``llora_cli.fastrun``). It is deliberately narrow:

- reads: the subset of ``Store``'s interface that ``engine.resolve_deployment`` and the llama.cpp engine use
  (``list``, ``get``, ``path_of``, ``reading``, ``children_by_role``), so that the runtime's own code resolves the
  deployment and applies the rules; rows are ``Row`` objects with the attributes of ``models.Artifact``;
- writes: one request-log row (``log_request``, the columns and value formats the ORM writes: naive UTC
  ``YYYY-MM-DD HH:MM:SS.ffffff`` and JSON ``params``), in a ``BEGIN IMMEDIATE`` transaction with the catalog's
  busy timeout, as ``db.make_engine`` sets up;
- anything else a caller asks (``new_staging``, ``add_derived``: a file still to be derived) raises
  ``NeedsCatalog``, and the caller goes the full way through ``Store``.

``open_catalog`` returns None (use ``Store``) for PostgreSQL (``LLORA_DB_URL``), a missing catalog, or a schema
that is not this llora's head (``Store`` explains or migrates). tests/store/test_lite.py checks every read and the
log row against the ORM's.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from llora_store import db
from llora_store import files as fs

_COLUMNS = "id, kind, name, state, content_hash, base_hash, quantization, domain, metadata"


class NeedsCatalog(Exception):
    """The light view cannot do this (it only reads and logs requests): use ``Store``."""


@dataclass
class Row:
    """An artifact row: the attributes of ``models.Artifact`` the runtime reads (``meta`` is its ``metadata``)."""

    id: str
    kind: str
    name: str
    state: str
    content_hash: str | None
    base_hash: str | None
    quantization: str | None
    domain: str | None
    meta: dict[str, Any] = field(default_factory=dict)


def _row(values: tuple) -> Row:
    *head, meta = values
    return Row(*head, meta=json.loads(meta) if meta else {})


class LiteCatalog:
    """The catalog of ``home`` through one ``sqlite3`` connection (see the module docstring)."""

    def __init__(self, home: Path, con: sqlite3.Connection) -> None:
        self.home = home
        self.layout = fs.Layout(home)
        self.con = con

    # -- reads ----------------------------------------------------------------------------------------------------
    def get(self, artifact_id: str) -> Row:
        found = self.con.execute(f"SELECT {_COLUMNS} FROM artifact WHERE id = ?", (artifact_id,)).fetchone()
        if found is None:
            raise NeedsCatalog(f"no artifact {artifact_id}")
        return _row(found)

    def path_of(self, artifact_id: str) -> Path:
        """The directory of an artifact's files (``Store.path_of`` for an id of a live artifact)."""
        if self.get(artifact_id).state == "discarded":
            raise NeedsCatalog("discarded")  # Store.path_of raises the user's error
        return self.layout.artifact_dir(artifact_id)

    def list(self, kind: str | None = None, state: str | None = None) -> list[Row]:
        """``Store.list``'s rows (oldest first), as ``Row`` objects."""
        where, args = [], []
        for col, value in (("kind", kind), ("state", state)):
            if value is not None:
                where.append(f"{col} = ?")
                args.append(value)
        sql = f"SELECT {_COLUMNS} FROM artifact" + (" WHERE " + " AND ".join(where) if where else "")
        return [_row(r) for r in self.con.execute(sql + " ORDER BY created_at, id", args)]

    @contextmanager
    def reading(self):
        """``Store.reading``: the session argument of ``children_by_role`` (unused: one connection)."""
        yield None

    def children_by_role(self, _session, artifact_id: str, role: str) -> list[Row]:
        """``Store.children_by_role``: children of ``artifact_id`` by lineage ``role``, oldest first."""
        cols = ", ".join(f"a.{c}" for c in _COLUMNS.split(", "))
        return [_row(r) for r in self.con.execute(
            f"SELECT {cols} FROM lineage l JOIN artifact a ON a.id = l.child_id WHERE l.parent_id = ? "
            "AND l.role = ? ORDER BY a.created_at", (artifact_id, role))]

    # -- the one write --------------------------------------------------------------------------------------------
    def log_request(self, *, base_id: str, modifier_id: str | None, engine: str, client: str, prompt: str,
                    response: str, tokens_in: int, tokens_out: int, latency_ms: float, ttft_ms: float | None,
                    params: dict[str, Any]) -> int:
        """``Store.log_request``: append one served request to the request log; returns its id."""
        at = datetime.now(timezone.utc).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
        self.con.execute("BEGIN IMMEDIATE")
        try:
            cur = self.con.execute(
                "INSERT INTO request_log (at, base_id, modifier_id, engine, client, prompt, response, tokens_in, "
                "tokens_out, latency_ms, ttft_ms, params) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (at, base_id, modifier_id, engine, client[:64], prompt, response, tokens_in, tokens_out,
                 latency_ms, ttft_ms, json.dumps(params)))
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        return int(cur.lastrowid)

    # -- what only Store does -------------------------------------------------------------------------------------
    def new_staging(self, artifact_id: str) -> Path:
        raise NeedsCatalog("a file must be derived first")

    def add_derived(self, *args, **kwargs) -> None:
        raise NeedsCatalog("a file must be derived first")

    def close(self) -> None:
        self.con.close()


def open_catalog(home: Path | None = None) -> LiteCatalog | None:
    """The light view of the SQLite catalog in ``home`` (default: ``db.default_home()``), or None when ``Store``
    must be used: PostgreSQL, no catalog yet, or a schema other than ``db.SCHEMA_HEAD``."""
    import os

    if os.environ.get("LLORA_DB_URL"):
        return None
    home = home or db.default_home()
    path = home / "catalog.db"
    if not path.is_file():
        return None
    con = sqlite3.connect(str(path), timeout=db.BUSY_TIMEOUT_S, isolation_level=None)
    try:
        con.execute(f"PRAGMA busy_timeout={db.BUSY_TIMEOUT_S * 1000}")
        con.execute("PRAGMA foreign_keys=ON")
        con.execute("PRAGMA synchronous=NORMAL")  # WAL is the database's own (persistent) setting
        if [r[0] for r in con.execute("SELECT version_num FROM alembic_version")] != [db.SCHEMA_HEAD]:
            con.close()
            return None
    except sqlite3.Error:
        con.close()
        return None
    return LiteCatalog(home, con)
