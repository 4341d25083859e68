"""``llora demo``: the main job, end to end on the embedded SmolLM2 model."""

from __future__ import annotations

from llora_cli.cli.options import JsonOpt, err, open_store, out, print_json, progress_printer


def demo(json_: JsonOpt = False) -> None:
    """Run every lifecycle stage that exists so far on the embedded SmolLM2-135M-Instruct.

    Registers the built-in base, shows the catalog and generates an answer on CPU.

    Example: llora demo
    """
    from llora_cli.demo import run_demo

    report = run_demo(open_store(), progress=progress_printer())
    if json_:
        print_json(report.to_json())
        return
    from rich.markup import escape

    from llora_cli.cli.kinds import render_list

    for step in report.steps:
        err().print(f"[green]✓[/] {escape(step)}")
    render_list(report.catalog, title="catalog")
    g = report.generation
    out().print(f"[bold]prompt:[/] {escape(g.prompt)}")
    out().print(f"[bold]answer:[/] {escape(g.text)}")
    err().print(f"[dim]{g.tokens_out} tokens in {g.seconds:.1f} s on {g.device}[/]")
