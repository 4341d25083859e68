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


def list_compressed(store, rows, *, json_: bool, title: str) -> None:
    """Compressed bases with their size and quality columns (from the figures measured at compress time)."""
    from rich.table import Table

    from llora_cli.cli.artifacts import human_bytes

    metas = {a.id: a.meta for a in store.artifacts(kind="compressed")}

    def figures(rid: str) -> dict:
        m = metas.get(rid) or {}
        c, q = m.get("compression") or {}, m.get("quality") or {}
        acc = q.get("accuracy") or {}
        return {"method": c.get("method"), "bytes": c.get("bytes"), "ratio_vs_bf16": c.get("ratio_vs_bf16"),
                "perplexity_delta_pct": (q.get("perplexity") or {}).get("delta_pct"), "kl_mean": q.get("kl_mean"),
                "accuracy_delta": {t: a.get("delta") for t, a in acc.items()}}

    if json_:
        print_json([{**r.to_json(), **figures(r.id)} for r in rows])
        return
    table = Table(title=title, title_justify="left")
    for col in ("id", "name", "state", "method", "size", "x bf16", "ppl", "KL", "acc (pts)", "source"):
        table.add_column(col, no_wrap=col in ("id", "name"))
    for r in rows:
        f = figures(r.id)
        acc = " ".join(f"{t[:4]} {d * 100:+.0f}" for t, d in f["accuracy_delta"].items() if d is not None) or "-"
        table.add_row(r.id, r.name, r.state, f["method"] or "-", human_bytes(f["bytes"] or 0),
                      f"{f['ratio_vs_bf16']:.3f}" if f["ratio_vs_bf16"] else "-",
                      f"{f['perplexity_delta_pct']:+.2f}%" if f["perplexity_delta_pct"] is not None else "-",
                      f"{f['kl_mean']:.4f}" if f["kl_mean"] is not None else "-", acc,
                      ", ".join(p["id"] for p in r.parents) or "-")
    out().print(table)


HELP = {
    "base": "Base models: list, show, add.",
    "adapter": "Training adapters (temporary; merged, never served): list, show, import.",
    "modifier": "Runtime modifiers (permanent; served on their base, never merged): list, show, import.",
    "merged": "Merged checkpoints (adapter merged into its base): list, show.",
    "compressed": "Compressed bases (quantized): list, show.",
    "router": "Routers (pick a modifier per query): list, show.",
    "dataset": "Datasets: list, show.",
    "scenario-set": "Scenario sets (measured answers of a base and its modifiers, or layer-set paths with --depth, made "
                    "by `llora router collect`): list, show.",
    "layer-adapters": "Layer-adapter sets (one small adapter per decoder layer of a base, made by `llora router "
                      "distill`): list, show.",
}


def kind_app(kind: str) -> typer.Typer:
    group = GROUPS[kind]
    app = typer.Typer(help=HELP[kind], no_args_is_help=True)

    @app.command("list")
    def list_(state: StateOpt = None, json_: JsonOpt = False) -> None:
        store = open_store()
        rows = store.list(kind=kind, state=state)
        if kind == "compressed":
            return list_compressed(store, rows, json_=json_, title=f"{group} ({len(rows)})")
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
