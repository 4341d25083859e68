"""``llora db``: schema status, upgrade and clean-up of interrupted writes."""

from __future__ import annotations

from typing import Annotated

import typer

from llora_cli.cli.options import JsonOpt, err, out, print_json

app = typer.Typer(help="Catalog database: status, upgrade, gc.", no_args_is_help=True)


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
    """Remove debris of interrupted commands: dead staging dirs, orphan dirs, files of discarded artifacts.

    Example: llora db gc --dry-run
    """
    report = _store_no_create().gc(dry_run=dry_run)
    data = {"dry_run": dry_run, **report.__dict__}
    if json_:
        print_json(data)
    else:
        for k, v in data.items():
            err().print(f"{k}: {v}")
