"""`llora doctor`, `llora db gc`, `llora db backup` and `llora db restore` as a user runs them (the installed console
script in fresh processes): exit codes, JSON, errors without tracebacks; backups taken while another process writes;
restores into an empty home, refused into a non-empty one; on SQLite and on a real PostgreSQL server (tests/pg.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

LLORA = str(Path(sys.executable).parent / "llora")


def llora(*args, home: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([LLORA, *map(str, args)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200", "LLORA_HOME": str(home), **(env or {})})


def ok_json(*args, home: Path, env: dict[str, str] | None = None):
    r = llora(*args, "--json", home=home, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def populate(home: Path) -> dict[str, str]:
    """A deployed base, a deployed modifier on it, a dataset and a discarded adapter, through the library."""
    from llora_store import open_store

    store = open_store(home)

    def staged(files):
        path = store.new_staging("x")
        for name, data in files.items():
            (path / name).write_bytes(data)
        return path

    base = store.create("base", "base", staging=staged({"model.safetensors": b"weights", "config.json": b"{}"}))
    data = store.create("dataset", "data", staging=staged({"rows.jsonl": b'{"a": 1}\n'}))
    mod = store.create("modifier", "code", state="trained", parents=[(base.id, "runs_on"), (data.id, "data")],
                       base_hash=base.content_hash, staging=staged({"adapter_model.safetensors": b"lora"}))
    ad = store.create("adapter", "old", state="trained", parents=[(base.id, "trained_on")],
                      base_hash=base.content_hash, staging=staged({"adapter_model.safetensors": b"old"}))
    store.deploy(base.id)
    store.deploy(mod.id)
    store.discard(ad.id)
    store.engine.dispose()
    return {"base": base.id, "data": data.id, "mod": mod.id, "ad": ad.id}


def catalog_rows(home: Path, env=None) -> list[tuple]:
    return sorted((a["name"], a["state"]) for kind in ("bases", "modifiers", "adapters", "datasets")
                  for a in ok_json(kind, "list", home=home, env=env))


def test_doctor_is_clean_then_reports_each_problem_with_its_fix(llora_home):
    ids = populate(llora_home)
    report = ok_json("doctor", home=llora_home)
    assert report["ok"] is True and report["findings"] == [] and report["checked"]["usable"] == 3

    (llora_home / "artifacts" / ids["base"] / "config.json").unlink()
    script = textwrap.dedent("""
        import os, signal, socket
        from llora_store import open_store
        s = open_store()
        a = s.create("modifier", "killed", state="training",
                     metadata={"run": {"host": socket.gethostname(), "pid": os.getpid()}})
        (s.new_staging(a.id) / "adapter_model.safetensors").write_bytes(b"half")
        print(a.id, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "LLORA_HOME": str(llora_home)})
    assert proc.returncode == -signal.SIGKILL
    dead = proc.stdout.strip()

    r = llora("doctor", "--json", home=llora_home)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    found = sorted((f["check"], f["artifact_id"]) for f in json.loads(r.stdout)["findings"])
    assert found == [("dead_transient", dead), ("missing_file", ids["base"]), ("orphan_staging", None)]
    human = llora("doctor", home=llora_home)
    assert human.returncode == 1 and "Traceback" not in human.stderr + human.stdout
    assert f"missing_file: base 'base' ({ids['base']}, deployed): config.json: missing" in human.stdout
    assert "fix: llora db gc (marks it failed" in human.stdout and "3 problem(s)" in human.stderr

    gc = ok_json("db", "gc", home=llora_home)
    assert gc["dead_runs_failed"] == [dead] and len(gc["staging_removed"]) == 1
    assert [(e["event"], e["to"]) for e in ok_json("history", dead, home=llora_home)][-1] == ("fail", "failed")
    after = json.loads(llora("doctor", "--json", home=llora_home).stdout)["findings"]
    assert [(f["check"], f["artifact_id"]) for f in after] == [("missing_file", ids["base"])]  # not gc's to fix


def test_backup_while_another_process_writes_is_consistent(llora_home, tmp_path):
    populate(llora_home)
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys
        from llora_store import open_store
        s = open_store()
        for i in range(10_000):
            a = s.create("dataset", f"w{i}")
            s.create("adapter", f"a{i}", state="trained", parents=[(a.id, "data")])
            print(i, flush=True)
    """)], stdout=subprocess.PIPE, text=True, env={**os.environ, "LLORA_HOME": str(llora_home)})
    try:
        assert writer.stdout.readline()  # the writer is under way
        held = sqlite3.connect(llora_home / "catalog.db", isolation_level=None, timeout=60)
        counts = []
        for n in range(3):
            dest = tmp_path / f"b{n}.db"
            if n == 1:  # another connection holds the write lock, a row not committed: backup neither waits nor sees it
                held.execute("BEGIN IMMEDIATE")
                held.execute("INSERT INTO artifact (id, kind, name, state, created_at, updated_at, metadata) VALUES "
                             "('00000000beef', 'base', 'uncommitted', 'ready', '2026-01-01', '2026-01-01', '{}')")
            res = ok_json("db", "backup", dest, home=llora_home)
            if n == 1:
                held.execute("ROLLBACK")
            con = sqlite3.connect(dest)
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # one self-contained file
            arts = dict(con.execute("SELECT name, id FROM artifact").fetchall())
            assert "uncommitted" not in arts and res["artifacts"] == len(arts)
            # one moment: every adapter's dataset (created just before it) and every create event are in it
            for name, aid in arts.items():
                assert con.execute("SELECT count(*) FROM event WHERE artifact_id = ? AND event = 'create'",
                                   (aid,)).fetchone()[0] == 1
                if name.startswith("a"):
                    assert f"w{name[1:]}" in arts
            con.close()
            counts.append(len(arts))
        held.close()
    finally:
        writer.kill()
        writer.wait()
    assert counts == sorted(counts) and counts[-1] > 4  # the writer went on meanwhile


def test_restore_into_an_empty_home_then_doctor_is_clean(llora_home, tmp_path):
    ids = populate(llora_home)
    backup = tmp_path / "catalog.backup"
    ok_json("db", "backup", backup, home=llora_home)
    before = catalog_rows(llora_home)
    history = ok_json("history", ids["mod"], home=llora_home)

    # 1. the catalog is lost, the files are not: restore, and the home is whole again
    for p in llora_home.glob("catalog.db*"):
        p.unlink()
    llora("bases", "list", home=llora_home)  # a command meanwhile created a fresh, empty catalog: still empty
    res = ok_json("db", "restore", backup, home=llora_home)
    assert (res["artifacts"], res["schema"]) == (4, "0003")
    assert catalog_rows(llora_home) == before and ok_json("history", ids["mod"], home=llora_home) == history
    assert ok_json("doctor", home=llora_home)["ok"] is True
    assert not [p.name for p in llora_home.iterdir() if ".restore-" in p.name]  # no temp file left

    # 2. a new home: the backup holds no files; doctor names what to bring back (llora import / a copy)
    new_home = tmp_path / "new-home"
    ok_json("db", "restore", backup, home=new_home)
    r = llora("doctor", "--json", home=new_home)
    assert r.returncode == 1
    missing = json.loads(r.stdout)["findings"]
    assert {(f["check"], f["artifact_id"]) for f in missing} == {
        ("missing_file", ids["base"]), ("missing_file", ids["data"]), ("missing_file", ids["mod"])}
    shutil.copytree(llora_home / "artifacts", new_home / "artifacts", dirs_exist_ok=True)
    assert ok_json("doctor", home=new_home)["ok"] is True


def test_restore_refuses_a_non_empty_home_and_bad_files(llora_home, tmp_path):
    populate(llora_home)
    backup = tmp_path / "catalog.backup"
    ok_json("db", "backup", backup, home=llora_home)
    before = (llora_home / "catalog.db").read_bytes()

    r = llora("db", "restore", backup, home=llora_home)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "is not empty (4 artifacts" in " ".join(r.stderr.split()) and "restore into a new home" in r.stderr
    assert (llora_home / "catalog.db").read_bytes() == before

    junk = tmp_path / "junk.db"
    junk.write_text("not a backup")
    cases = [(("db", "restore", junk), 2, "is not a llora catalog backup"),
             (("db", "restore", tmp_path / "nope.db"), 1, "there is no backup file at"),
             (("db", "restore", tmp_path), 2, "is a directory, not a backup file"),
             (("db", "backup", backup), 1, "already exists; a backup never overwrites a file"),
             (("db", "backup", tmp_path / "no-dir" / "b.db"), 1, "does not exist")]
    fresh = tmp_path / "fresh-home"
    for args, code, message in cases:
        r = llora(*args, home=fresh if args[1] == "restore" else llora_home)
        text = " ".join(r.stderr.split())
        assert (r.returncode, "Traceback" in text) == (code, False), (args, r.stderr)
        assert message in text, (args, text)
    assert not (fresh / "catalog.db").exists() or ok_json("doctor", home=fresh)["checked"]["artifacts"] == 0

    # a damaged backup (pages overwritten) into an empty, migrated home: refused, the home exactly as it was
    assert llora("db", "upgrade", home=fresh).returncode == 0
    data = backup.read_bytes()
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(data[:4096] + b"\xff" * 8192 + data[12288:])
    empty = {p.name: p.read_bytes() for p in fresh.iterdir() if p.is_file()}
    r = llora("db", "restore", damaged, home=fresh)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "is a damaged SQLite file" in " ".join(r.stderr.split()) and "nothing was restored" in r.stderr
    assert {p.name: p.read_bytes() for p in fresh.iterdir() if p.is_file()} == empty  # no temp file, no change


def test_backup_and_restore_on_postgresql(postgres_cluster, llora_home, tmp_path):
    src = postgres_cluster.url(postgres_cluster.create_database())
    dst = postgres_cluster.url(postgres_cluster.create_database())
    env = {"LLORA_DB_URL": src}
    os.environ["LLORA_DB_URL"] = src
    try:
        ids = populate(llora_home)
    finally:
        del os.environ["LLORA_DB_URL"]
    before = catalog_rows(llora_home, env)
    history = ok_json("history", ids["mod"], home=llora_home, env=env)
    backup = tmp_path / "catalog.pgdump"
    res = ok_json("db", "backup", backup, home=llora_home, env=env)
    assert (res["backend"], res["artifacts"], res["schema"]) == ("postgresql", 4, "0003")
    assert backup.read_bytes()[:5] == b"PGDMP"

    refused = llora("db", "restore", backup, home=llora_home, env=env)  # the source itself is not empty
    assert refused.returncode == 1 and "is not empty (4 artifacts" in " ".join(refused.stderr.split())
    sqlite_backup = llora("db", "restore", backup, home=tmp_path / "h")  # no LLORA_DB_URL: an SQLite catalog
    assert sqlite_backup.returncode == 2 and "is a pg_dump archive backup but the catalog is SQLite" in \
        " ".join(sqlite_backup.stderr.split())

    dst_env = {"LLORA_DB_URL": dst}
    assert llora("db", "upgrade", home=llora_home, env=dst_env).returncode == 0  # empty but migrated: still empty
    cut = tmp_path / "cut.pgdump"  # a dump cut short: pg_restore fails part-way, its one transaction rolls back
    cut.write_bytes(backup.read_bytes()[: backup.stat().st_size * 4 // 5])
    failed = llora("db", "restore", cut, home=llora_home, env=dst_env)
    assert failed.returncode == 1 and "pg_restore failed" in failed.stderr and "Traceback" not in failed.stderr
    assert ok_json("db", "status", home=llora_home, env=dst_env)["state"] == "current"
    assert catalog_rows(llora_home, dst_env) == []
    restored = ok_json("db", "restore", backup, home=llora_home, env=dst_env)
    assert (restored["artifacts"], restored["schema"]) == (4, "0003")
    assert catalog_rows(llora_home, dst_env) == before
    assert ok_json("history", ids["mod"], home=llora_home, env=dst_env) == history
    assert ok_json("doctor", home=llora_home, env=dst_env)["ok"] is True
    again = llora("db", "restore", backup, home=llora_home, env=dst_env)
    assert again.returncode == 1 and "Traceback" not in again.stderr
