"""``llora <kind>s list|show``: the same two commands for every artifact kind."""

from __future__ import annotations

import typer

from llora_cli.cli.options import ArtifactRef, JsonOpt, StateOpt, open_store, out, print_json, short
from llora_store.models import GROUPS, with_article

__all__ = ["GROUPS", "kind_app", "render_list"]


def render_list(rows, *, title: str) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_lines=False)
    for col in ("id", "name", "state", "parents", "hash", "created"):
        table.add_column(col, no_wrap=col in ("id", "name", "hash"))
    for r in rows:
        parents = ", ".join(f"{p['id']} ({p['role']})" for p in r.parents) or "-"
        table.add_row(r.id, r.name, r.state, parents, short(r.content_hash), r.created_at.strftime("%Y-%m-%d %H:%M"))
    out().print(table)


HELP = {
    "base": "Base models: list, show, add.",
    "adapter": "Training adapters (temporary; merged, never served): list, show, import.",
    "modifier": "Runtime modifiers (permanent; served on their base, never merged): list, show.",
    "merged": "Merged checkpoints (adapter merged into its base): list, show.",
    "compressed": "Compressed bases (quantized): list, show.",
    "router": "Routers (pick a modifier per query): list, show.",
    "dataset": "Datasets: list, show.",
}


def kind_app(kind: str) -> typer.Typer:
    group = GROUPS[kind]
    app = typer.Typer(help=HELP[kind], no_args_is_help=True)

    @app.command("list")
    def list_(state: StateOpt = None, json_: JsonOpt = False) -> None:
        rows = open_store().list(kind=kind, state=state)
        if json_:
            print_json([r.to_json() for r in rows])
        else:
            render_list(rows, title=f"{group} ({len(rows)})")

    list_.__doc__ = f"List {group}, oldest first.\n\nExample: llora {group} list --state deployed --json"

    @app.command("show")
    def show_(ref: ArtifactRef, json_: JsonOpt = False) -> None:
        from llora_cli.cli.artifacts import render_detail

        detail = open_store().describe(ref)
        if detail.summary.kind != kind:
            from llora_store.errors import BadInput

            raise BadInput(
                f"'{ref}' is {with_article(detail.summary.kind)}, not {with_article(kind)}",
                hint=f"llora show {detail.summary.id}",
            )
        print_json(detail.to_json()) if json_ else render_detail(detail)

    show_.__doc__ = f"Show one {kind}: state, lineage, files and metadata.\n\nExample: llora {group} show NAME"
    return app
