"""Top-level verbs on any artifact: show, lineage, history, verify, deploy, retire, discard."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from llora_cli.cli.options import (
    ArtifactRef,
    JsonOpt,
    YesOpt,
    command_line,
    err,
    human_bytes,
    open_store,
    out,
    print_json,
    short,
)
from llora_store.errors import Corrupt, UsageError


def render_detail(d) -> None:
    import json

    from rich.markup import escape
    from rich.table import Table

    s = d.summary
    info = Table.grid(padding=(0, 2))
    info.add_column(style="bold")
    info.add_column()
    rows = [
        ("id", s.id), ("kind", s.kind), ("name", s.name), ("state", s.state),
        ("created", s.created_at.isoformat(timespec="seconds")),
        ("updated", d.updated_at.isoformat(timespec="seconds")),
        ("content hash", s.content_hash or "-"), ("base hash", d.base_hash or "-"),
        ("quantization", d.quantization or "-"), ("domain", s.domain or "-"),
        ("parents", ", ".join(f"{p['id']} ({p['role']})" for p in s.parents) or "-"),
        ("children", ", ".join(f"{c['id']} ({c['role']})" for c in d.children) or "-"),
        ("directory", str(d.directory)),
    ]
    for k, v in rows:
        info.add_row(k, escape(v))
    out().print(info)
    if d.files:
        files = Table(title="files", title_justify="left")
        files.add_column("path")
        files.add_column("bytes", justify="right")
        files.add_column("sha256")
        for f in d.files:
            files.add_row(escape(f.path) + (" [dim](deleted)[/]" if f.deleted else ""), human_bytes(f.bytes), short(f.sha256, 16))
        out().print(files)
    if d.evaluations:
        evals = Table(title="evaluations", title_justify="left")
        for col in ("at", "dataset", "split", "n", "loss", "perplexity", "accuracy"):
            evals.add_column(col)
        for e in d.evaluations:
            m = e["metrics"]
            acc = f"{m['accuracy']:.1%}" if m.get("accuracy") is not None else "-"
            evals.add_row(e["at"][:19], e["dataset"] or "-", e["split"], str(m.get("n")), str(m.get("loss")),
                          str(m.get("perplexity")), acc)
        out().print(evals)
    if d.metadata.get("quality"):
        render_quality(d.metadata)
    if d.metadata:
        out().print("[bold]metadata[/]")
        out().print(escape(json.dumps(d.metadata, indent=2, default=str)))


def render_quality(meta: dict) -> None:
    """The compression table: size, and each quality figure for the source and the compressed model."""
    from rich.table import Table

    c, q = meta.get("compression") or {}, meta.get("quality") or {}
    table = Table(title=f"quality vs source ({c.get('method', '?')})", title_justify="left")
    for col in ("measure", "source", "compressed", "change"):
        table.add_column(col, justify="left" if col == "measure" else "right")
    if c.get("bytes"):
        table.add_row("size", human_bytes(c.get("source_bf16_bytes") or 0) + " (bf16)", human_bytes(c["bytes"]),
                      f"x{c['ratio_vs_bf16']:.3f}" if c.get("ratio_vs_bf16") else "-")
    ppl = q.get("perplexity") or {}
    if ppl:
        table.add_row(f"perplexity ({q['heldout']['perplexity_rows']} held-out rows)", f"{ppl['source']:.3f}",
                      f"{ppl['compressed']:.3f}", f"{ppl['delta_pct']:+.2f}%")
    if q.get("kl_mean") is not None:
        table.add_row(f"next-token KL ({q['heldout']['kl_prompts']} prompts)", "0", f"{q['kl_mean']:.5f}", "")
    for task, acc in (q.get("accuracy") or {}).items():
        table.add_row(f"{task} accuracy ({q['heldout']['task_rows']} rows)", f"{acc['source']:.1%}",
                      f"{acc['compressed']:.1%}", f"{acc['delta'] * 100:+.1f} pts")
    out().print(table)


def show(ref: ArtifactRef, json_: JsonOpt = False) -> None:
    """Show any artifact: state, hashes, parents, children, files and metadata.

    Example: llora show smollm2 --json
    """
    detail = open_store().describe(ref)
    print_json(detail.to_json()) if json_ else render_detail(detail)


def lineage(ref: ArtifactRef, json_: JsonOpt = False) -> None:
    """Show where an artifact came from (parents) and what was made from it (children), as a tree.

    Example: llora lineage my-adapter
    """
    root = open_store().lineage(ref)
    if json_:
        print_json(root.to_json())
        return
    render_lineage(root)


def render_lineage(root) -> None:
    from rich.markup import escape
    from rich.tree import Tree

    def label(n) -> str:
        role = f"[dim]{escape(n.role)}:[/] " if n.role else ""
        return f"{role}[bold]{n.kind}[/] {escape(n.name)} [dim]{n.id}[/] " + escape(f"[{n.state}]")

    tree = Tree(label(root))

    def grow(branch, nodes, attr) -> None:
        for n in nodes:
            grow(branch.add(label(n)), getattr(n, attr), attr)

    if root.parents:
        grow(tree.add("[italic]parents[/]"), root.parents, "parents")
    if root.children:
        grow(tree.add("[italic]children[/]"), root.children, "children")
    out().print(tree)


def history(ref: ArtifactRef, json_: JsonOpt = False) -> None:
    """Show an artifact's event history (append-only): every creation and state change.

    Example: llora history my-adapter
    """
    events = open_store().history(ref)
    if json_:
        print_json([e.to_json() for e in events])
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table()
    for col in ("at", "event", "from", "to", "command", "reason"):
        table.add_column(col)
    for e in events:
        table.add_row(e.at.isoformat(timespec="seconds"), e.event, e.from_state or "-", e.to_state,
                      escape(e.command), escape(e.reason))
    out().print(table)


def verify(ref: ArtifactRef, json_: JsonOpt = False) -> None:
    """Re-hash an artifact's files and report missing, changed or unexpected files (exit 1 if any).

    Example: llora verify smollm2
    """
    report = open_store().verify(ref)
    if json_:
        print_json(report.to_json())
    elif report.ok:
        out().print(f"ok: {report.name} ({report.id}): {report.checked} files match the catalog")
    if not report.ok:
        raise Corrupt(
            f"{report.name} ({report.id}): {len(report.problems)} problem(s): " + "; ".join(report.problems),
            hint="restore the files, or discard the artifact and create it again",
        )


def deploy(
    ref: ArtifactRef,
    calculator: Optional[bool] = typer.Option(
        None, "--calculator/--no-calculator",
        help="A modifier's serving default: compute the result of each arithmetic step it writes (llora run "
             "--calculator) in every request it answers, routed ones too, unless the request says otherwise."),
    json_: JsonOpt = False,
) -> None:
    """Deploy a base, merged or compressed checkpoint, a modifier or a router (rules R5-R8 apply).

    A modifier trained on a GGUF base is converted to a llama.cpp LoRA first (recorded as a
    derived file); one that does not fit its base is refused.

    Example: llora deploy smollm2
    Example: llora deploy reasoning-modifier --calculator
    """
    from llora_cli.deploy import deploy as deploy_artifact
    from llora_cli.engine.base import SERVING

    art, note = deploy_artifact(open_store(), ref, command=command_line(), calculator=calculator)
    serving = art.meta.get(SERVING) or None
    if json_:
        print_json({"id": art.id, "name": art.name, "state": art.state, "note": note, "serving": serving})
    else:
        err().print(f"deployed {art.kind} '{art.name}' ({art.id})" + (f"\nnote: {note}" if note else "")
                    + (f"\nserving defaults: {serving}" if serving else ""))


def retire(ref: ArtifactRef, json_: JsonOpt = False) -> None:
    """Retire a deployed artifact (refused while deployed artifacts depend on it).

    Example: llora retire smollm2
    """
    art = open_store().retire(ref, command=command_line())
    print_json({"id": art.id, "name": art.name, "state": art.state}) if json_ else err().print(
        f"retired {art.kind} '{art.name}' ({art.id})"
    )


def discard(
    ref: ArtifactRef,
    reason: str = typer.Option("", "--reason", help="Why; recorded in the history."),
    yes: YesOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Delete an artifact's files; its catalog row, lineage and history are kept (R9).

    Refused while a deployed artifact depends on it (R7). Asks for confirmation
    unless --yes; without a terminal, --yes is required.

    Example: llora discard old-adapter --yes --reason "superseded"
    """
    store = open_store()
    art = store.resolve(ref)
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"discarding {art.kind} '{art.name}' ({art.id}) deletes its files; pass --yes to confirm")
        typer.confirm(f"Delete the files of {art.kind} '{art.name}' ({art.id})?", abort=True, err=True)
    art = store.discard(art.id, command=command_line(), reason=reason)
    print_json({"id": art.id, "name": art.name, "state": art.state}) if json_ else err().print(
        f"discarded {art.kind} '{art.name}' ({art.id}); its row, lineage and history are kept"
    )


def register(app: typer.Typer) -> None:
    for fn in (show, lineage, history, verify, deploy, retire, discard):
        app.command(fn.__name__)(fn)
