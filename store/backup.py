"""`llora db backup FILE` and `llora db restore FILE`: the catalog database, online and consistent.

SQLite: the backup API (``sqlite3.Connection.backup``) copies the catalog page by page from one read transaction,
so the copy is the state of one moment even while other processes write (WAL lets them go on). PostgreSQL:
``pg_dump --format=custom`` (one repeatable-read snapshot) and ``pg_restore --single-transaction``.

What a backup holds: the catalog only (artifact rows, lineage, files' hashes, history, evaluations, request log),
never the artifact files under ``$LLORA_HOME/artifacts``; those are copied with the home directory or carried by
``llora export`` (files plus their record). A restore goes into an empty catalog only, and is all or nothing: the
SQLite file is written next to the catalog and renamed over it; PostgreSQL's restore is one transaction.
"""

from __future__ import annotations

import glob
import os
import shutil
import sqlite3
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from llora_store.db import KNOWN_REVISIONS, SCHEMA_HEAD, database_url
from llora_store.errors import BadInput, Conflict, Corrupt, NotFound, SchemaTooNew, UserError

SQLITE_MAGIC = b"SQLite format 3\x00"
PGDUMP_MAGIC = b"PGDMP"
PG_TIMEOUT_S = 3600
# Tables whose rows make a catalog "not empty" (alembic_version alone is an empty, migrated catalog).
CONTENT_TABLES = ("artifact", "event", "lineage", "artifact_file", "evaluation", "request_log")


@dataclass(frozen=True)
class BackupResult:
    """A written backup (or a restored one): where, from or into which catalog, what it holds."""

    path: str
    url: str
    backend: str  # "sqlite" or "postgresql"
    schema: str | None
    artifacts: int
    events: int
    bytes: int

    def to_json(self) -> dict:
        return dict(self.__dict__)


def backend_of(url: str) -> str:
    """``sqlite`` or ``postgresql`` for a catalog URL; BadInput for a database llora cannot back up."""
    if url.startswith("sqlite"):
        return "sqlite"
    if url.startswith("postgresql"):
        return "postgresql"
    raise BadInput(f"llora backs up SQLite and PostgreSQL catalogs, not {url.split(':', 1)[0]}")


def _shown(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


# -- SQLite --------------------------------------------------------------------------------------------------------

def _sqlite_path(url: str) -> Path:
    from sqlalchemy.engine import make_url

    db = make_url(url).database
    if not db or db == ":memory:":
        raise BadInput(f"the catalog URL {url} names no database file")
    return Path(db)


def _sqlite_counts(con: sqlite3.Connection) -> tuple[str | None, dict[str, int]]:
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    schema = None
    if "alembic_version" in tables:
        row = con.execute("SELECT version_num FROM alembic_version").fetchone()
        schema = row[0] if row else None
    counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in CONTENT_TABLES if t in tables}
    return schema, counts


def _sqlite_backup(source: Path, tmp: Path) -> tuple[str | None, dict[str, int]]:
    if not source.is_file():
        raise NotFound(f"there is no catalog at {source} to back up", hint="check LLORA_HOME (or --home)")
    try:
        return _sqlite_copy(source, tmp)
    except sqlite3.DatabaseError as e:
        raise Corrupt(f"the catalog at {source} cannot be read ({e}); no backup was written",
                      hint="copy the file aside and check it with: sqlite3 FILE 'PRAGMA integrity_check'") from None


def _sqlite_copy(source: Path, tmp: Path) -> tuple[str | None, dict[str, int]]:
    src = sqlite3.connect(source, timeout=60)  # read-write open: a read-only one cannot read a WAL database reliably
    try:
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst)  # pages=-1: the whole database in one step, from one read transaction
            dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
            if dst.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
                raise Corrupt(f"the copy of {source} fails SQLite's integrity check; no backup was written")
            return _sqlite_counts(dst)
        finally:
            dst.close()
    finally:
        src.close()


def _sqlite_restore(backup: Path, target: Path) -> tuple[str | None, dict[str, int]]:
    if target.exists() and target.stat().st_size > 0:
        try:
            con = sqlite3.connect(target, timeout=60)
            try:
                _, counts = _sqlite_counts(con)
            finally:
                con.close()
        except sqlite3.DatabaseError as e:
            raise Conflict(f"the catalog at {target} is not an SQLite database llora can read ({e}); "
                           "nothing was restored", hint="move it away, then restore again") from None
        if any(counts.values()):
            raise Conflict(
                f"the catalog at {target} is not empty ({counts.get('artifact', 0)} artifacts, "
                f"{counts.get('event', 0)} events); restore goes into an empty home only, nothing was changed",
                hint="restore into a new home: llora --home NEW_DIR db restore FILE (or LLORA_HOME=NEW_DIR)")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.restore-", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        try:
            src = sqlite3.connect(f"file:{backup}?mode=ro", uri=True)
            try:
                dst = sqlite3.connect(tmp)
                try:
                    src.backup(dst)
                    dst.execute("PRAGMA journal_mode=DELETE")
                    if dst.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
                        raise Corrupt(f"{backup} fails SQLite's integrity check; nothing was restored")
                    schema, counts = _sqlite_counts(dst)
                finally:
                    dst.close()
            finally:
                src.close()
        except sqlite3.DatabaseError as e:  # truncated or overwritten pages
            raise Corrupt(f"{backup} is a damaged SQLite file ({e}); nothing was restored",
                          hint="restore an older backup") from None
        _check_schema(schema, backup)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        for suffix in ("-wal", "-shm"):  # the empty catalog's journal must not be replayed into the restored one
            Path(f"{target}{suffix}").unlink(missing_ok=True)
        os.replace(tmp, target)
        return schema, counts
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _check_schema(schema: str | None, backup: Path) -> None:
    if schema is None:
        raise BadInput(f"{backup} holds no llora catalog (no schema version); nothing was restored")
    if schema not in KNOWN_REVISIONS:
        raise SchemaTooNew(f"{backup} was written by a newer llora (schema {schema}; this one knows up to "
                           f"{SCHEMA_HEAD}); nothing was restored", hint="upgrade llora, then restore")


# -- PostgreSQL ----------------------------------------------------------------------------------------------------

def pg_tool(name: str) -> str:
    """The path of ``pg_dump`` or ``pg_restore``: the newest under /usr/lib/postgresql/*/bin (a client must be at
    least the server's version), else on PATH. UserError if there is none."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    if found:
        return found[-1]
    on_path = shutil.which(name)
    if on_path:
        return on_path
    raise UserError(f"{name} is not installed; a PostgreSQL catalog is backed up and restored with it",
                    hint="install the PostgreSQL client tools (Debian: apt-get install postgresql-client)")


def _libpq(url: str) -> tuple[str, dict[str, str]]:
    """A libpq connection URI for ``url`` without its password, and the environment carrying the password
    (a password on a command line is visible to every user in ``ps``)."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    env = {**os.environ}
    if u.password:
        env["PGPASSWORD"] = str(u.password)
    plain = u.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), env


def _pg_run(cmd: list[str], env: dict[str, str], what: str) -> None:
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=PG_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise UserError(f"{what} did not finish within {PG_TIMEOUT_S} s; nothing was changed") from None
    if r.returncode != 0:
        raise UserError(f"{what} failed: {' '.join(r.stderr.split())[-800:]}",
                        hint="check that the server is reachable with LLORA_DB_URL's user and database")


def _pg_counts(url: str) -> tuple[str | None, dict[str, int]]:
    from sqlalchemy import inspect, text

    from llora_store.db import cannot_open, make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
            schema = None
            if "alembic_version" in tables:
                row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
                schema = row[0] if row else None
            counts = {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
                      for t in CONTENT_TABLES if t in tables}
    except Exception as e:  # the driver's error: no server, wrong password
        if isinstance(e, UserError):
            raise
        raise cannot_open(engine, e) from None
    finally:
        engine.dispose()
    return schema, counts


def _pg_backup(url: str, tmp: Path) -> tuple[str | None, dict[str, int]]:
    conninfo, env = _libpq(url)
    schema, counts = _pg_counts(url)
    if schema is None:
        raise NotFound(f"the catalog at {_shown(url)} has no llora schema to back up")
    _pg_run([pg_tool("pg_dump"), "--format=custom", "--no-owner", "--no-privileges", f"--file={tmp}",
             f"--dbname={conninfo}"], env, "pg_dump")
    return schema, counts


def _pg_restore(backup: Path, url: str) -> tuple[str | None, dict[str, int]]:
    conninfo, env = _libpq(url)
    _, counts = _pg_counts(url)
    if any(counts.values()):
        raise Conflict(
            f"the catalog at {_shown(url)} is not empty ({counts.get('artifact', 0)} artifacts, "
            f"{counts.get('event', 0)} events); restore goes into an empty catalog only, nothing was changed",
            hint="create an empty database and point LLORA_DB_URL at it, then restore again")
    # --clean --if-exists: an empty but migrated catalog's tables are replaced; one transaction: all or nothing
    _pg_run([pg_tool("pg_restore"), "--single-transaction", "--clean", "--if-exists", "--no-owner",
             "--no-privileges", "--exit-on-error", f"--dbname={conninfo}", str(backup)], env, "pg_restore")
    schema, counts = _pg_counts(url)
    _check_schema(schema, backup)
    return schema, counts


# -- the two operations --------------------------------------------------------------------------------------------

def _magic(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(16)
    except IsADirectoryError:
        raise BadInput(f"{path} is a directory, not a backup file") from None
    except FileNotFoundError:
        raise NotFound(f"there is no backup file at {path}") from None


def backup(home: Path, dest: Path) -> BackupResult:
    """Write a consistent copy of the catalog of ``home`` (or ``LLORA_DB_URL``) to ``dest``, online.

    SQLite: an SQLite database file; PostgreSQL: a ``pg_dump --format=custom`` archive. Written to a temporary
    file beside ``dest`` and renamed: ``dest`` is complete or absent. Raises Conflict if ``dest`` exists,
    NotFound if there is no catalog, UserError if pg_dump is missing or fails, Corrupt if the copy is damaged.
    """
    url = database_url(home)
    kind = backend_of(url)
    dest = Path(dest).expanduser().absolute()
    if dest.exists():
        raise Conflict(f"{dest} already exists; a backup never overwrites a file",
                       hint="choose another file name, or remove the old one first")
    if not dest.parent.is_dir():
        raise NotFound(f"the directory {dest.parent} does not exist", hint="create it first, or choose another path")
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        if kind == "sqlite":
            tmp.unlink()  # sqlite3 creates it afresh
            schema, counts = _sqlite_backup(_sqlite_path(url), tmp)
        else:
            schema, counts = _pg_backup(url, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.link(tmp, dest)  # unlike a rename, fails if dest appeared meanwhile: never overwrites
        tmp.unlink()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return BackupResult(str(dest), _shown(url), kind, schema, counts.get("artifact", 0), counts.get("event", 0),
                        dest.stat().st_size)


def restore(home: Path, source: Path) -> BackupResult:
    """Restore a backup written by ``backup`` into the catalog of ``home`` (or ``LLORA_DB_URL``), which must be
    empty (no artifact or event rows; a fresh, migrated catalog counts as empty).

    All or nothing: SQLite gets a temporary file renamed over the catalog, PostgreSQL one pg_restore transaction.
    Artifact files are not in a backup. Raises Conflict for a catalog that is not empty, BadInput for a file that
    is not a backup of this catalog's kind, NotFound for a missing file, SchemaTooNew for a newer llora's backup,
    UserError if pg_restore is missing or fails.
    """
    url = database_url(home)
    kind = backend_of(url)
    source = Path(source).expanduser().absolute()
    magic = _magic(source)
    found = "sqlite" if magic.startswith(SQLITE_MAGIC) else "postgresql" if magic.startswith(PGDUMP_MAGIC) else None
    if found is None:
        raise BadInput(f"{source} is not a llora catalog backup (neither an SQLite database nor a pg_dump archive)",
                       hint="give a file written by: llora db backup FILE")
    if found != kind:
        where = "LLORA_DB_URL points at PostgreSQL" if kind == "postgresql" else "the catalog is SQLite (no LLORA_DB_URL)"
        raise BadInput(f"{source} is a {'pg_dump archive' if found == 'postgresql' else 'SQLite'} backup but {where}",
                       hint="restore an SQLite backup with LLORA_DB_URL unset, a pg_dump archive with LLORA_DB_URL "
                            "set to an empty PostgreSQL database")
    if kind == "sqlite":
        target = _sqlite_path(url)
        schema, counts = _sqlite_restore(source, target)
        size = target.stat().st_size
    else:
        schema, counts = _pg_restore(source, url)
        size = source.stat().st_size
    return BackupResult(str(source), _shown(url), kind, schema, counts.get("artifact", 0), counts.get("event", 0), size)
