"""`llora router collect|distill|fit|eval`: scenario sets, layer-adapter sets, routers fitted on them, and routers
measured on held-out queries."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llora_cli.cli.options import ArtifactRef, JsonOpt, NameOpt, command_line, err, open_store, out, print_json
from llora_store.errors import BadInput

app = typer.Typer(help="Routers that pick a modifier per query: collect scenarios, distill layer adapters, fit, eval.",
                  no_args_is_help=True)

DataOpt = Annotated[list[str], typer.Option("--data", "-d", help="Dataset (id or name) with a checker; repeat it "
                                                                   "for mixed domains.")]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", help="At most this many queries per dataset.")]
EngineOpt = Annotated[str, typer.Option("--engine", help="auto (llama.cpp for a GGUF base when installed), "
                                                          "llamacpp or transformers.")]


def _bar(label: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=err())


@app.command("collect")
def collect(
    base: Annotated[str, typer.Argument(metavar="BASE", help="The base (id or name) the modifiers run on.")],
    data: DataOpt,
    limit: LimitOpt = None,
    modifier: Annotated[Optional[list[str]], typer.Option(
        "--modifier", "-m", help="Route only to these modifiers of BASE (repeat; default: every runnable one).")] = None,
    name: NameOpt = None,
    engine: EngineOpt = "auto",
    depth: Annotated[Optional[str], typer.Option(
        "--depth", metavar="LAYERSET", help="Collect depth scenarios instead: seed 002's greedy search of which "
        "layers this layer-adapter set can replace per query (transformers engine).")] = None,
    threshold: Annotated[float, typer.Option(
        "--threshold", help="With --depth: the lowest teacher-forced agreement a layer set may score.")] = 0.99,
    max_fraction: Annotated[float, typer.Option(
        "--max-fraction", help="With --depth: replace at most this fraction of the decoder layers.")] = 0.5,
    json_: JsonOpt = False,
) -> None:
    """Measure the base alone and each of its modifiers on every training query of the datasets (greedy, scored
    by the task's checker) and register the outcomes as a scenario set. With --depth LAYERSET: for each query, the
    path of layer sets (greedy, one layer added per step) whose replacement by their adapters keeps the base's
    answer (teacher-forced agreement >= --threshold). Interrupted, the same command resumes.

    Example: llora router collect smollm2-q8 --data code-n200 --data reasoning-n200 --limit 100
    Example: llora router collect smollm2 --depth layers-smollm2 --data reasoning-n200 --limit 50
    """
    from llora_cli.router.collect import collect as run_collect

    if depth is not None:
        if modifier or engine not in ("auto", "transformers"):
            raise BadInput("--depth searches layer sets of the base alone on the transformers engine: "
                           "--modifier and --engine llamacpp do not apply")
        from llora_cli.router.depth.scenarios import collect_depth

        with _bar("collecting depth scenarios") as bar:
            task = bar.add_task("collect", total=None)
            res = collect_depth(open_store(), base, depth, list(data), limit=limit, name=name, threshold=threshold,
                                max_fraction=max_fraction, command=command_line(),
                                progress=lambda d, t: bar.update(task, completed=d, total=t))
        if json_:
            print_json({"id": res.artifact.id, "name": res.artifact.name, "rows": res.rows, "resumed": res.resumed,
                        "figures": res.summary})
            return
        f = res.summary["overall"]
        err().print(f"depth scenario set '{res.artifact.name}' ({res.artifact.id}): {res.rows} queries"
                    f"{f' ({res.resumed} resumed)' if res.resumed else ''}; layers replaced per query: mean "
                    f"{f['layers_replaced_mean']} ({f['fraction_replaced_mean']:.1%}), histogram "
                    f"{f['layers_replaced_histogram']}; full depth correct {f['correct']}/{f['n']}")
        return

    with _bar("collecting") as bar:
        task = bar.add_task("collect", total=None)
        res = run_collect(open_store(), base, list(data), limit=limit, name=name, engine=engine,
                          modifiers=modifier or None, command=command_line(),
                          progress=lambda d, t: bar.update(task, completed=d, total=t))
    if json_:
        print_json({"id": res.artifact.id, "name": res.artifact.name, "rows": res.rows, "resumed": res.resumed,
                    "figures": res.summary, "candidates": res.artifact.meta["candidates"]})
        return
    f = res.summary["overall"]
    names = {k: v["name"] for k, v in res.artifact.meta["modifiers"].items()}
    fixed = ", ".join(f"{names.get(c, c)} {v['accuracy']:.1%}" for c, v in f["fixed"].items())
    err().print(f"scenario set '{res.artifact.name}' ({res.artifact.id}): {res.rows} queries"
                f"{f' ({res.resumed} resumed)' if res.resumed else ''}; fixed choices: {fixed}; "
                f"oracle {f['oracle']['accuracy']:.1%}")


@app.command("distill")
def distill(
    base: Annotated[str, typer.Argument(metavar="BASE", help="The base (id or name) whose layers are distilled.")],
    data: DataOpt,
    limit: LimitOpt = None,
    name: NameOpt = None,
    config: Annotated[Optional[list[str]], typer.Argument(
        metavar="[KEY=VALUE]...", help="width, steps, lr, batch_tokens, memory_mb, max_len, seed.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Distill one small adapter per decoder layer of the base (down -> ReLU -> up, residual), trained by MSE to
    the real layer's output on the base's own answers that the task's checker scores correct. Registers a
    layer-adapter set. Interrupted, the same command resumes.

    Example: llora router distill smollm2 --data reasoning-n200 --limit 100 width=64
    """
    from llora_cli.router.depth.distill import distill as run_distill

    with _bar("distilling") as bar:
        task = bar.add_task("distill", total=None)
        res = run_distill(open_store(), base, list(data), limit=limit, name=name, config=config or [],
                          command=command_line(),
                          progress=lambda stage, d, t: bar.update(task, completed=d, total=t, description=stage))
    if json_:
        print_json({"id": res.artifact.id, "name": res.artifact.name, "layers": res.layers, "rows": res.rows,
                    "mse": res.mse, "mse_skip": res.mse_skip, "resumed_layers": res.resumed_layers})
        return
    worst = max(range(res.layers), key=lambda i: res.mse[i])
    err().print(f"layer-adapter set '{res.artifact.name}' ({res.artifact.id}): {res.layers} layers distilled on "
                f"{res.rows['correct']} of {res.rows['answered']} queries answered correctly; highest MSE layer "
                f"{worst}: {res.mse[worst]:.4g} (skipping it: {res.mse_skip[worst]:.4g})")


@app.command("fit")
def fit(
    scenarios: Annotated[str, typer.Argument(metavar="SCENARIOS", help="Scenario set (id or name).")],
    method: Annotated[str, typer.Option("--method", "-m", help="fbc, dpo or orpo.")] = "orpo",
    name: NameOpt = None,
    config: Annotated[Optional[list[str]], typer.Argument(
        metavar="[KEY=VALUE]...", help="hidden, steps, lr, weight_decay, holdout, seed, beta (dpo), lam (orpo).")] = None,
    depth: Annotated[Optional[str], typer.Option(
        "--depth", metavar="DEPTHSCENARIOS", help="Also fit the layer and ratio heads (which decoder layers to "
        "replace, and how many) on this depth scenario set of the same base.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Fit a router (a small head on the frozen sentence embedding) on a scenario set; with --depth also the
    layer and ratio heads, by the same method.

    Example: llora router fit scenarios-smollm2-q8 --method orpo lam=0.5
    Example: llora router fit scenarios-smollm2 --depth depth-scenarios-smollm2 --method fbc
    """
    from llora_cli.router.fit import fit as run_fit

    with _bar("fitting") as bar:
        task = bar.add_task("fit", total=None)
        res = run_fit(open_store(), scenarios, method=method, name=name, config=config or [], depth=depth,
                      command=command_line(),
                      progress=lambda stage, s, t: bar.update(task, completed=s, total=t, description=stage))
    warning = res.training.get("depth", {}).get("warning")
    if warning:  # on stderr with --json too, as train's memorisation warning
        err().print(f"[yellow]warning:[/] {warning}", highlight=False)
    if json_:
        print_json({"id": res.artifact.id, "name": res.artifact.name, "method": method, "training": res.training})
        return
    h = res.training["heldout"]
    held = f"{h['accuracy']:.1%} of {h['n']}" if h["n"] else "no held-out query with a winner"
    err().print(f"router '{res.artifact.name}' ({res.artifact.id}) fitted by {method}: final loss "
                f"{res.training['loss_curve'][-1]['loss']:.4f}, held-out routing accuracy {held}")
    d = res.training.get("depth")
    if d:
        h = d["heldout"]
        err().print(f"depth heads: held-out {h['n']} queries" + (
            f", predicted layer set measured safe on {h.get('safe', 0)}/{h['n']}, exactly the target on "
            f"{h.get('exact', 0)}; mean k {h.get('k_predicted_mean')} (target {h.get('k_target_mean')})"
            if h["n"] else ""))


@app.command("eval")
def eval_(
    router: ArtifactRef,
    data: DataOpt,
    limit: LimitOpt = None,
    engine: EngineOpt = "auto",
    depth: Annotated[bool, typer.Option(
        "--depth", help="Measure the depth heads instead: accuracy and decode speed of the router's layer sets vs "
        "full depth and static pruning baselines (transformers engine).")] = False,
    plot: Annotated[Optional[Path], typer.Option(
        "--plot", help="With --depth: also write accuracy vs decode speed-up of every method as a PNG.")] = None,
    config: Annotated[Optional[list[str]], typer.Argument(
        metavar="[KEY=VALUE]...", help="With --depth: pooled, sweep (0/1), sweep_every, speed_tokens, repeats, seed.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Measure a router on held-out queries (never used by collect or fit): routing and end-to-end accuracy per
    domain, against the oracle, each fixed choice and a nearest-centroid router, and its overhead per query.
    With --depth: its layer sets against full depth, the best static set, static sets per domain, the last k,
    ShortGPT, random sets, plain skipping and the per-query search, at the same number of replaced layers.

    Example: llora router eval router-smollm2-q8-orpo --data code-n200 --data reasoning-n200
    Example: llora router eval router-smollm2-depth --data reasoning-n200 --depth --plot pareto.png
    """
    from llora_cli.router.evaluate import evaluate

    if depth:
        from llora_cli.router.depth.evaluation import evaluate_depth

        if engine not in ("auto", "transformers"):
            raise BadInput(f"--depth runs on the transformers engine, not {engine}: llama.cpp cannot replace layers")
        with _bar("evaluating depth") as bar:
            task = bar.add_task("depth", total=None)
            report = evaluate_depth(open_store(), router, list(data), limit=limit, config=config or [], plot=plot,
                                    command=command_line(), progress=lambda s: bar.update(task, description=s))
        if json_:
            print_json(report)
            return
        render_depth_eval(report)
        return
    if plot is not None or config:
        raise BadInput("--plot and KEY=VALUE settings belong to --depth")
    with _bar("evaluating") as bar:
        task = bar.add_task("eval", total=None)
        report = evaluate(open_store(), router, list(data), limit=limit, engine=engine, command=command_line(),
                          progress=lambda d, t: bar.update(task, completed=d, total=t))
    if json_:
        print_json(report)
        return
    render_eval(report)


def render_eval(report: dict) -> None:
    from rich.table import Table

    def cell(a: dict) -> str:
        if not a["n"]:
            return "-"
        return f"{a['accuracy']:.1%} [{a['ci95'][0]:.0%}, {a['ci95'][1]:.0%}] n={a['n']}"

    for scope, figures in [("overall", report["overall"]), *report["domains"].items()]:
        table = Table(title=f"router '{report['router']['name']}' on {scope}", title_justify="left")
        table.add_column("choice", no_wrap=True)
        table.add_column("routing accuracy")
        table.add_column("end-to-end accuracy")
        for label, row in figures["choices"].items():
            table.add_row(label, cell(row["routing"]) if row.get("routing") else "-", cell(row["end_to_end"]))
        out().print(table)
    o = report["overhead_ms"]
    out().print(f"router overhead at batch 1 (encoder included): median {o['median']:.1f} ms, "
                f"p90 {o['p90']:.1f} ms over {o['n']} queries")


def render_depth_eval(report: dict) -> None:
    from rich.table import Table

    table = Table(title=f"router '{report['router']['name']}' depth on {report['n']} held-out queries "
                        f"({report['layers']} layers, router k mean {report['router_k']['mean']})", title_justify="left")
    for col in ("method", "layers", "accuracy [95% CI]", "vs full (bootstrap 95%)", "rel.", "decode x b1", "decode x b8"):
        table.add_column(col, no_wrap=col == "method")
    for name, m in report["methods"].items():
        table.add_row(name, f"{m['layers_replaced_mean']:.2f}",
                      f"{m['correct']}/{m['n']} {m['accuracy']:.1%} [{m['ci95'][0]:.0%}, {m['ci95'][1]:.0%}]",
                      f"{m['vs_full']['difference']:+.1%} [{m['vs_full']['ci95'][0]:+.0%}, {m['vs_full']['ci95'][1]:+.0%}]",
                      "-" if m["relative_to_full"] is None else f"{m['relative_to_full']:.2f}",
                      f"{m['batch1']['decode_speedup']:.2f}", f"{m['batch8']['decode_speedup']:.2f}")
    out().print(table)
    g = report["goal"]
    out().print(f"goal (>= {g['relative_accuracy']:.0%} of full-depth accuracy at >= {g['decode_speedup_batch1']}x "
                f"decode, faster than the best static set): {'met' if g['met'] else 'not met'}")
    if report.get("plot"):
        err().print(f"wrote {report['plot']}")
