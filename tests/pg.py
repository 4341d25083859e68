"""A throwaway PostgreSQL cluster for the catalog tests (pytest plugin, loaded by tests/conftest.py).

The server binaries of Debian's ``postgresql`` package (``/usr/lib/postgresql/*/bin``; ``scripts/setup.sh dev``
installs it) run ``initdb`` on a temporary directory and ``pg_ctl start`` on a free loopback port, as the
``postgres`` user when the tests run as root (the server refuses root). The cluster starts on first use, once
per session, and is stopped and removed at the end. Durability is switched off (``fsync``, ``full_page_writes``,
``synchronous_commit``): a crash loses the cluster, which is thrown away anyway.

``postgres_url`` gives a test a fresh, empty database (for migrations); ``postgres_catalog_url`` a database at
llora's schema head shared by the session and emptied before each test (truncation takes ~0.03 s; creating and
migrating a database per test ~0.3 s, which over the ~250 store tests would be over a minute). Where the server cannot run (no binaries, no
psycopg, no start) a test that needs it is skipped with the reason, except in CI (``CI=true``), where it fails:
CI must not pass without having run the catalog on PostgreSQL.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

START_TIMEOUT_S = 60
PREFIX = "llora-pg-"


class PostgresUnavailable(Exception):
    """The server cannot be started here; the message says why."""


class PostgresCluster:
    """One ``initdb`` cluster in a temporary directory, listening on 127.0.0.1:``port``."""

    def __init__(self) -> None:
        self.bindir = _find_bindir()
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise PostgresUnavailable("psycopg is not installed in this venv (bash scripts/setup.sh dev)") from None
        _reap_stale()
        self.root = Path(tempfile.mkdtemp(prefix=PREFIX))
        (self.root / "owner.pid").write_text(f"{os.getpid()}\n")
        self.data = self.root / "data"
        self.user = self._run_as()
        self.port = _free_port()
        self._names = itertools.count(1)
        self._shared = None  # the admin connection to the shared catalog database
        self.started = False

    def _run_as(self) -> str | None:
        """The account that runs the server: ``postgres`` when we are root, else ourselves (None)."""
        if os.geteuid() != 0:
            return None
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailable("running as root and there is no 'postgres' user to run the server") from None
        os.chown(self.root, pw.pw_uid, pw.pw_gid)
        return "postgres"

    def _cmd(self, *args: str, timeout: float = START_TIMEOUT_S) -> subprocess.CompletedProcess:
        cmd = list(args)
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.root)

    def start(self) -> None:
        r = self._cmd(f"{self.bindir}/initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                      "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync")
        if r.returncode != 0:
            raise PostgresUnavailable(f"initdb failed: {(r.stderr or r.stdout).strip()[-800:]}")
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.root} "
                "-c fsync=off -c full_page_writes=off -c synchronous_commit=off -c max_connections=300 "
                "-c shared_buffers=32MB")
        r = self._cmd(f"{self.bindir}/pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"),
                      "-o", opts, "-w", "-t", str(START_TIMEOUT_S), "start")
        if r.returncode != 0:
            log = (self.root / "server.log").read_text(errors="replace")[-800:] if (self.root / "server.log").exists() else ""
            raise PostgresUnavailable(f"pg_ctl start failed: {(r.stderr or r.stdout).strip()[-400:]} {log}".strip())
        self.started = True

    def stop(self) -> None:
        if self._shared is not None:
            self._shared.close()
        if self.started:
            self._cmd(f"{self.bindir}/pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as c:
            c.execute(sql)

    def create_database(self) -> str:
        """A new, empty database."""
        name = f"llora_test_{next(self._names)}"
        self.admin(f"CREATE DATABASE {name} TEMPLATE template0")
        return name

    def shared_catalog(self) -> str:
        """The URL of one database at llora's schema head, emptied (every table truncated) on each call.

        Creating a database costs 0.1-0.3 s here, truncating ~0.03 s: most tests share this one. Connections
        other tests left open to it are closed first, so none holds a lock the truncation would wait for.
        """
        import psycopg

        from llora_store import db

        if self._shared is None:
            self.admin("CREATE DATABASE llora_shared TEMPLATE template0")
            engine = db.make_engine(self.url("llora_shared"))
            db.upgrade(engine)
            engine.dispose()
            self._shared = psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=llora_shared",
                                           autocommit=True)
        con = self._shared
        con.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        version = con.execute("SELECT version_num FROM alembic_version").fetchall()
        assert version == [(db.SCHEMA_HEAD,)], f"a test changed the shared catalog's schema version: {version}"
        tables = [r[0] for r in con.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'")]
        con.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY")
        return self.url("llora_shared")

    def drop_database(self, name: str) -> None:
        self.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _find_bindir() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if found:
        return str(Path(found[-1]).parent)
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:
        return str(Path(pg_ctl).parent)
    raise PostgresUnavailable("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/pg_ctl); "
                              "install them with: apt-get install -y postgresql (scripts/setup.sh dev does)")


def _reap_stale() -> None:
    """Stop and remove clusters of earlier test sessions that were killed before their teardown."""
    for root in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        try:
            os.kill(int((root / "owner.pid").read_text()), 0)
            continue  # its session is still running
        except ProcessLookupError:
            pass
        except (OSError, ValueError):
            continue  # not ours to judge
        pid_file = root / "data" / "postmaster.pid"
        try:
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGINT)  # the server's fast shutdown
        except (OSError, ValueError, IndexError):
            pass
        shutil.rmtree(root, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unavailable(reason: str):
    message = f"PostgreSQL catalog tests need a local server: {reason}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI=true: these tests must run in CI)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_cluster():
    """The session's server, started on first use; skipped (failed in CI) where it cannot start."""
    try:
        cluster = PostgresCluster()
    except PostgresUnavailable as e:
        _unavailable(str(e))
    try:
        cluster.start()
    except (PostgresUnavailable, OSError, subprocess.TimeoutExpired) as e:
        cluster.stop()
        _unavailable(str(e))
    yield cluster
    cluster.stop()


@pytest.fixture
def postgres_url(postgres_cluster) -> str:
    """A fresh, empty database on the session's server, dropped after the test."""
    name = postgres_cluster.create_database()
    yield postgres_cluster.url(name)
    postgres_cluster.drop_database(name)


@pytest.fixture
def postgres_catalog_url(postgres_cluster) -> str:
    """The session's shared database at llora's schema head, emptied for this test."""
    return postgres_cluster.shared_catalog()
