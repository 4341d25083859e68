"""Engine, connection settings and schema version checks for the catalog database.

SQLite (the default) is opened with foreign keys on, WAL and a busy timeout,
and every write transaction starts with ``BEGIN IMMEDIATE`` so that concurrent
``llora`` processes queue for the write lock instead of failing with
"database is locked" when a reader tries to upgrade to a writer.

PostgreSQL (``LLORA_DB_URL=postgresql+psycopg://...``, a team-shared catalog)
gets the same one-writer-at-a-time rule: every write transaction first takes a
transaction-level advisory lock (``pg_advisory_xact_lock``), released at commit
or rollback. Without it two processes could both read an artifact as 'trained'
and both move it on (read committed does not stop that), or run the first
migrations at once. Readers take no lock, as on SQLite.

The schema version is read with one query; alembic itself is only imported
when a migration has to run (``llora db upgrade`` or a fresh store).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from llora_store.errors import Corrupt, SchemaOutOfDate, SchemaTooNew, UserError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

# The migration chain, oldest first. A test checks it against llora_migrations.
KNOWN_REVISIONS: tuple[str, ...] = ("0001", "0002", "0003")
SCHEMA_HEAD = KNOWN_REVISIONS[-1]
BUSY_TIMEOUT_S = 60
# The advisory lock key of the catalog's write lock on PostgreSQL (any fixed bigint; this one spells "llora").
PG_WRITE_LOCK = 0x6C6C6F7261


def default_home() -> Path:
    """``$LLORA_HOME``, else the platform's user data directory."""
    env = os.environ.get("LLORA_HOME")
    if env:
        return Path(env).expanduser().resolve()
    from platformdirs import user_data_dir

    return Path(user_data_dir("llora", appauthor=False))


def database_url(home: Path) -> str:
    return os.environ.get("LLORA_DB_URL") or f"sqlite:///{home / 'catalog.db'}"


def make_engine(url: str) -> Engine:
    """The catalog's engine; a URL that names no usable database is a UserError, not a traceback."""
    from sqlalchemy import create_engine, event
    from sqlalchemy.exc import ArgumentError

    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False})
        else:
            engine = create_engine(url, pool_pre_ping=True, json_serializer=json_dumps_finite)
    except ArgumentError as e:  # also NoSuchModuleError: an unknown dialect or driver name
        raise UserError(f"LLORA_DB_URL is not a database URL llora can use: {e}",
                        hint="use postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE, or unset it for SQLite") from None
    except ImportError as e:
        raise UserError(f"the database driver for {_shown(url)} is not installed ({e.name or e})",
                        hint='for PostgreSQL: pip install "psycopg[binary]" and use a postgresql+psycopg:// URL') from None
    if engine.dialect.name == "postgresql":
        _pg_write_lock(engine)
        return engine
    if engine.dialect.name != "sqlite":
        return engine

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # pragma: no cover - exercised by every test
        dbapi_conn.isolation_level = None  # transactions are begun by _on_begin
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # pragma: no cover - exercised by every test
        write = conn.get_execution_options().get("llora_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def json_dumps_finite(obj) -> str:
    """JSON for a server that keeps to the standard (PostgreSQL): NaN and infinities become null.

    SQLite stores Python's ``NaN`` token and gives it back; PostgreSQL's json type refuses it, and a training
    loss that diverged must not make the run unrecordable.
    """
    import json
    import math

    try:
        return json.dumps(obj, allow_nan=False)
    except ValueError:
        def finite(o):
            if isinstance(o, float) and not math.isfinite(o):
                return None
            if isinstance(o, dict):
                return {k: finite(v) for k, v in o.items()}
            if isinstance(o, (list, tuple)):
                return [finite(v) for v in o]
            return o

        return json.dumps(finite(obj), allow_nan=False)


def _pg_write_lock(engine: Engine) -> None:
    from sqlalchemy import event

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # pragma: no cover - exercised by the PostgreSQL tests
        if conn.get_execution_options().get("llora_write", False):
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_WRITE_LOCK})")


def _shown(url: str) -> str:
    """The URL without its password, for messages."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "LLORA_DB_URL"


def cannot_open(engine: Engine, exc: Exception) -> UserError:
    """The error for a catalog database that cannot be reached (no server, wrong password, unwritable file)."""
    orig = getattr(exc, "orig", None) or exc
    reason = " ".join(str(orig).split())  # the driver's words, on one line
    return UserError(
        f"cannot open the catalog at {engine.url.render_as_string(hide_password=True)}: {reason}",
        hint="check that LLORA_HOME (or LLORA_DB_URL) points at a writable place or a running server",
    )


@dataclass(frozen=True)
class SchemaStatus:
    url: str
    current: str | None  # None: empty database
    head: str
    state: str  # "empty", "current", "outdated", "newer"


def schema_status(engine: Engine) -> SchemaStatus:
    from sqlalchemy import inspect, text
    from sqlalchemy.exc import OperationalError

    url = engine.url.render_as_string(hide_password=True)
    try:
        conn = engine.connect()
    except OperationalError as e:
        raise cannot_open(engine, e) from None
    with conn:
        tables = set(inspect(conn).get_table_names())
        if "alembic_version" not in tables:
            if tables & {"artifact", "event"}:
                raise Corrupt(
                    f"the catalog at {url} has llora tables but no schema version",
                    hint="restore it from a backup, or point LLORA_HOME elsewhere",
                )
            return SchemaStatus(url, None, SCHEMA_HEAD, "empty")
        rows = [r[0] for r in conn.execute(text("SELECT version_num FROM alembic_version"))]
    if not rows:
        return SchemaStatus(url, None, SCHEMA_HEAD, "empty")
    current = rows[0]
    if current == SCHEMA_HEAD:
        return SchemaStatus(url, current, SCHEMA_HEAD, "current")
    if current in KNOWN_REVISIONS:
        return SchemaStatus(url, current, SCHEMA_HEAD, "outdated")
    return SchemaStatus(url, current, SCHEMA_HEAD, "newer")


def check_schema(engine: Engine, *, auto_create: bool = True) -> SchemaStatus:
    """Refuse a catalog from another schema; create a fresh one in place."""
    status = _fast_status(engine)
    if status is not None:
        return status
    status = schema_status(engine)
    if status.state == "empty" and auto_create:
        upgrade(engine)
        return schema_status(engine)
    if status.state == "outdated":
        raise SchemaOutOfDate(
            f"the catalog at {status.url} has schema {status.current}; this llora needs {status.head}",
            hint="back it up, then run: llora db upgrade",
        )
    if status.state == "newer":
        raise SchemaTooNew(
            f"the catalog at {status.url} was written by a newer llora (schema {status.current}); "
            f"this llora knows schemas up to {status.head}",
            hint="upgrade llora (pip install -U llora); nothing was changed",
        )
    return status


def _fast_status(engine: Engine) -> SchemaStatus | None:
    """The common case in one query: the schema is current."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    try:
        with engine.connect() as conn:
            rows = [r[0] for r in conn.execute(text("SELECT version_num FROM alembic_version"))]
    except DBAPIError:
        return None
    if rows == [SCHEMA_HEAD]:
        return SchemaStatus(engine.url.render_as_string(hide_password=True), SCHEMA_HEAD, SCHEMA_HEAD, "current")
    return None


def alembic_config(engine: Engine):
    """An Alembic config whose scripts come from the installed llora_migrations package."""
    from importlib.resources import files

    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(files("llora_migrations")))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Run migrations up to ``revision`` holding the write lock (safe if several processes race)."""
    from alembic import command

    status = schema_status(engine)
    if status.state == "newer":
        raise SchemaTooNew(
            f"the catalog at {status.url} was written by a newer llora (schema {status.current})",
            hint="upgrade llora; nothing was changed",
        )
    cfg = alembic_config(engine)
    with engine.execution_options(llora_write=True).connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
