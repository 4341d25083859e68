"""``llora db``: schema status, upgrade, clean-up of interrupted writes, backup and restore of the catalog."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llora_cli.cli.options import JsonOpt, err, out, print_json

app = typer.Typer(help="Catalog database: status, upgrade, gc, backup, restore.", no_args_is_help=True)


def _store_no_create():
    from llora_store import open_store

    return open_store(auto_create=False)


@app.command("status")
def status(json_: JsonOpt = False) -> None:
    """Show the catalog's location, schema revision and leftovers of interrupted commands.

    Example: llora db status --json
    """
    from llora_store.db import database_url, default_home, make_engine, schema_status
    from llora_store.files import Layout

    home = default_home()
    url = database_url(home)
    if url.startswith("sqlite:///") and not (home / "catalog.db").exists():
        from llora_store.db import SCHEMA_HEAD, SchemaStatus

        st = SchemaStatus(url, None, SCHEMA_HEAD, "absent")
    else:
        st = schema_status(make_engine(url))

    leftovers = [p.name for p in Layout(home).leftovers()]
    data = {"home": str(home), "url": st.url, "current": st.current, "head": st.head, "state": st.state,
            "staging_leftovers": leftovers}
    if json_:
        print_json(data)
        return
    for k, v in data.items():
        out().print(f"{k}: {v}")


@app.command("upgrade")
def upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Migrate the catalog to this llora's schema (back it up first).

    Example: llora db upgrade
    """
    from llora_store.db import database_url, default_home, make_engine, schema_status
    from llora_store.db import upgrade as run_upgrade

    home = default_home()
    home.mkdir(parents=True, exist_ok=True)
    engine = make_engine(database_url(home))
    before = schema_status(engine).current
    run_upgrade(engine, revision)
    after = schema_status(engine).current
    err().print(f"catalog schema: {before or 'empty'} -> {after}")


@app.command("gc")
def gc(dry_run: Annotated[bool, typer.Option("--dry-run", help="Only report.")] = False, json_: JsonOpt = False) -> None:
    """Repair debris of interrupted commands, and nothing else.

    Runs whose process died (left in 'training') are marked failed with an event row; dead staging dirs,
    artifact dirs without a catalog row, files of discarded artifacts and dead writers' temporary files
    are removed; a sidecar (llora.json) left naming an old state is rewritten from the catalog.
    `llora doctor` lists them first.

    Example: llora db gc --dry-run
    """
    report = _store_no_create().gc(dry_run=dry_run)
    data = {"dry_run": dry_run, **report.__dict__}
    if json_:
        print_json(data)
    else:
        for k, v in data.items():
            err().print(f"{k}: {v}")


BackupFile = Annotated[Path, typer.Argument(metavar="FILE", help="The backup file.")]


@app.command("backup")
def backup(file: BackupFile, json_: JsonOpt = False) -> None:
    """Write a consistent copy of the catalog to FILE, online.

    SQLite's backup API, or pg_dump for a PostgreSQL catalog; other processes go on writing.
    The catalog only: artifact files are carried by `llora export` (or a copy of the home's
    artifacts/ directory), not by the backup.

    Example: llora db backup ~/llora-catalog-2026-11-30.db
    """
    from llora_store.backup import backup as run_backup
    from llora_store.db import default_home

    res = run_backup(default_home(), file)
    if json_:
        print_json(res.to_json())
    else:
        err().print(f"backed up {res.url} ({res.artifacts} artifacts, {res.events} events, schema {res.schema}) "
                    f"to {res.path} ({res.bytes} bytes)")


@app.command("restore")
def restore(file: BackupFile, json_: JsonOpt = False) -> None:
    """Restore a backup written by `llora db backup` into an empty catalog.

    A new home, or an empty PostgreSQL database (LLORA_DB_URL); a catalog with any artifact is
    refused. All or nothing. Then run `llora doctor`: it reports artifacts whose files are not in
    the home (bring them with `llora import` or a copy).

    Example: llora --home ~/llora-restored db restore ~/llora-catalog-2026-11-30.db
    """
    from llora_store.backup import restore as run_restore
    from llora_store.db import default_home

    res = run_restore(default_home(), file)
    if json_:
        print_json(res.to_json())
    else:
        err().print(f"restored {res.path} into {res.url}: {res.artifacts} artifacts, {res.events} events, "
                    f"schema {res.schema}; check it with: llora doctor")
