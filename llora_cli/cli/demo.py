"""``llora demo``: the main job, end to end on the embedded SmolLM2 model."""

from __future__ import annotations

from typing import Annotated

import typer

from llora_cli.cli.options import JsonOpt, err, open_store, out, print_json, progress_printer


def demo(
    adapter_steps: Annotated[int, typer.Option(help="Training steps of the demo's training adapter.")] = 12,
    modifier_steps: Annotated[int, typer.Option(help="Training steps of each of the demo's modifiers "
                                                     "(automation, reasoning).")] = 24,
    modifier_learning_rate: Annotated[float, typer.Option(
        "--modifier-lr", help="Learning rate of the demo's modifiers (llora train's modifier default: 1e-3 over 100 "
                              "steps).")] = 2e-3,
    rows: Annotated[int, typer.Option(help="Training rows generated per task.")] = 240,
    eval_rows: Annotated[int, typer.Option(help="Held-out rows per task for eval.")] = 12,
    compress_method: Annotated[str, typer.Option(help="How the merged checkpoint is compressed.")] = "gguf-q8_0",
    compress_eval_rows: Annotated[int, typer.Option(help="Held-out rows per task for the compression's "
                                                          "accuracy comparison (0, the default, skips it: "
                                                          "perplexity and next-token KL are always measured).")] = 0,
    router_rows: Annotated[int, typer.Option(help="Training queries per domain the router's scenarios are "
                                                  "collected on.")] = 10,
    routed_requests: Annotated[int, typer.Option(help="Held-out requests answered with --modifier auto.")] = 6,
    no_router: Annotated[bool, typer.Option("--no-router", help="Skip the router stage.")] = False,
    no_train: Annotated[bool, typer.Option("--no-train", help="Only register the base and generate.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Run every lifecycle stage that exists so far on the embedded SmolLM2-135M-Instruct.

    Registers the built-in base and generates an answer, makes task data,
    trains a training adapter, merges it into its base (verified), compresses
    the merged checkpoint (quality measured), trains automation and reasoning
    modifiers on the compressed base, evaluates every stage on held-out rows,
    deploys the compressed base and a modifier and answers one request with and
    without it (checked, logged), fits a router (ORPO) and answers held-out
    requests with --modifier auto, and shows seconds per stage, the lineage and
    the catalog. The defaults keep it under 10 minutes on a 2-core CPU.

    Example: llora demo --modifier-steps 60
    """
    from llora_cli.demo import DemoOptions, run_demo

    opts = DemoOptions(adapter_steps=adapter_steps, modifier_steps=modifier_steps,
                       modifier_learning_rate=modifier_learning_rate, rows=rows, eval_rows=eval_rows,
                       compress_method=compress_method, compress_eval_rows=compress_eval_rows, router_rows=router_rows,
                       routed_requests=routed_requests, router=not no_router, train=not no_train)
    report = run_demo(open_store(), progress=progress_printer(), options=opts)
    if json_:
        print_json(report.to_json())
        return
    from rich.markup import escape
    from rich.table import Table

    from llora_cli.cli.kinds import render_list

    for step in report.steps:
        err().print(f"[green]✓[/] {escape(step)}")
    g = report.generation
    out().print(f"[bold]prompt:[/] {escape(g.prompt)}")
    out().print(f"[bold]answer:[/] {escape(g.text)}")
    if report.evaluations:
        table = Table(title="held-out evaluation", title_justify="left")
        for col in ("artifact", "kind", "task", "n", "loss", "accuracy"):
            table.add_column(col)
        for e in report.evaluations:
            acc = f"{e['accuracy']:.1%}" if e["accuracy"] is not None else "-"
            table.add_row(escape(e["artifact"]["name"]), e["artifact"]["kind"], e["task"], str(e["n"]),
                          f"{e['loss']:.3f}", acc)
        out().print(table)
    if report.compress is not None:
        from llora_cli.cli.artifacts import render_quality

        render_quality(open_store().get(report.compress["compressed"]["id"]).meta)
    if report.runtime is not None:
        rt = report.runtime
        out().print(f"[bold]request[/] ({rt['engine']} engine): {escape(rt['prompt'])}")
        for a in rt["answers"]:
            mark = "[green]passes[/]" if a["passes_checker"] else "[red]fails[/]"
            out().print(f"  [bold]{escape(a['modifier'] or 'base alone')}[/] ({mark} the checker): {escape(a['text'])}")
        log = Table(title="request log (newest first)", title_justify="left")
        for col in ("#", "modifier", "engine", "client", "tokens out", "ms"):
            log.add_column(col)
        for r in rt["log"]:
            log.add_row(str(r["id"]), r["modifier"]["name"] if r["modifier"] else "-", r["engine"], r["client"],
                        str(r["tokens_out"]), f"{r['latency_ms']:.0f}")
        out().print(log)
    if report.router is not None and "answers" in report.router:
        r = report.router
        table = Table(title=f"--modifier auto: router '{r['router']['name']}' ({r['engine']} engine), "
                            "held-out requests", title_justify="left")
        for col in ("#", "task", "request", "chosen", "p", "router ms", "checker"):
            table.add_column(col)
        for a in r["answers"]:
            # the chosen modifier by its domain (its name is in the catalog below): narrow terminals keep it readable
            chosen = f"{a['chosen_domain']} modifier" if a["chosen"] else "base alone"
            if a.get("calculator_forced") is not None:  # served with the calculator (the reasoning modifier's default)
                chosen += f" +calc({a['calculator_forced']})"
            table.add_row(str(a["log_id"]), a["task"], escape(a["prompt"][:48]), escape(chosen),
                          f"{a['probability']:.2f}", f"{a['router_ms']:.0f}",
                          "[green]passes[/]" if a["passes_checker"] else "[red]fails[/]")
        out().print(table)
    if report.timings:
        total = sum(report.timings.values())
        err().print("[dim]seconds per stage: " + ", ".join(f"{k} {v:.0f}" for k, v in report.timings.items())
                    + f"; total {total:.0f}[/]")
    if report.lineage is not None:
        from llora_cli.cli.artifacts import render_lineage

        out().print("[bold]lineage of the modifier[/]")
        render_lineage(report.lineage)
    render_list(report.catalog, title="catalog")
