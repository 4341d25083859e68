"""Schema: migrations match the models, one head, fresh stores created, foreign schemas refused."""

from __future__ import annotations

import sqlite3

import pytest

from llora_store import SchemaOutOfDate, SchemaTooNew, open_store
from llora_store import db as dbmod


@pytest.fixture
def catalog_starts_empty() -> bool:
    return True  # these tests create and migrate the catalog themselves


def test_fresh_store_is_created_at_head(llora_home):
    from sqlalchemy import inspect

    store = open_store(llora_home)
    assert store.schema.current == dbmod.SCHEMA_HEAD
    with store.engine.connect() as conn:
        assert set(inspect(conn).get_table_names()) == {
            "artifact", "lineage", "artifact_file", "event", "evaluation", "request_log", "alembic_version"}


@pytest.mark.sqlite_only
def test_sqlite_catalog_is_a_wal_file_in_the_home(llora_home):
    open_store(llora_home)
    con = sqlite3.connect(llora_home / "catalog.db")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.sqlite_only
def test_connections_have_foreign_keys_and_busy_timeout(store):
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == dbmod.BUSY_TIMEOUT_S * 1000


def test_upgrade_head_matches_models(store):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from llora_store.models import SQLModel

    with store.engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), SQLModel.metadata)
    assert diffs == []


def test_migrations_have_one_head_and_known_chain(store):
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(dbmod.alembic_config(store.engine))
    assert script.get_heads() == [dbmod.SCHEMA_HEAD]
    chain = [rev.revision for rev in script.walk_revisions()][::-1]
    assert tuple(chain) == dbmod.KNOWN_REVISIONS


def test_store_from_newer_schema_is_refused_and_untouched(llora_home, cli):
    store = open_store(llora_home)
    store.create("base", "keep-me")
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(SchemaTooNew, match="newer llora"):
        open_store(llora_home)
    result = cli("bases", "list")
    assert result.exit_code == 1
    assert "newer llora" in result.stderr and "Traceback" not in result.stderr
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT name FROM artifact").all() == [("keep-me",)]
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == "9999"


def test_store_from_older_schema_asks_for_upgrade_then_upgrades_keeping_data(llora_home, cli):
    """A real catalog at revision 0001 (before the evaluation table) is refused, then migrated."""
    llora_home.mkdir(parents=True)
    engine = dbmod.make_engine(dbmod.database_url(llora_home))
    dbmod.upgrade(engine, "0001")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO artifact (id, kind, name, state, created_at, updated_at, metadata) "
            "VALUES ('aaaa00000001', 'base', 'old-base', 'ready', '2026-01-01 00:00:00', '2026-01-01 00:00:00', '{}')"
        )
    with pytest.raises(SchemaOutOfDate) as exc:
        open_store(llora_home)
    assert "llora db upgrade" in exc.value.hint
    listed = cli("bases", "list")
    assert listed.exit_code == 1 and "llora db upgrade" in listed.stderr
    assert cli("db", "upgrade").exit_code == 0
    assert [a.name for a in open_store(llora_home).list()] == ["old-base"]


def test_db_status_and_upgrade_commands(cli, llora_home):
    result = cli("db", "upgrade")
    assert result.exit_code == 0, result.output
    assert f"empty -> {dbmod.SCHEMA_HEAD}" in result.stderr
    status = cli.json("db", "status")
    assert status["current"] == status["head"] == dbmod.SCHEMA_HEAD and status["state"] == "current"


def test_two_processes_creating_a_fresh_store_at_once(llora_home):
    import subprocess
    import sys

    code = f"from llora_store import open_store; s = open_store({str(llora_home)!r}); print(s.schema.current)"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert all(o[0].strip() == dbmod.SCHEMA_HEAD for o in outs)
