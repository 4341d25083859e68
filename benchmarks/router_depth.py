"""Dynamic depth on SmolLM2-135M: the router's layer sets vs full depth and static pruning (issue 14).

Usage::

    LLORA_HOME=DIR .venv/bin/llora demo            # once: a deployed compressed base and modifiers
    .venv/bin/python benchmarks/router_depth.py --home DIR [--domains code]
        [--distill-rows 64] [--collect-rows 16] [--test-rows 40] [--method fbc] [--plot FILE] [--sweep-every 3]
        [--pooled 16] [--distill-config steps=1000] [--fit-config KEY=VALUE,...]

The commands a user runs, through their library functions, on the home ``llora demo`` left: its deployed
compressed base (the Q8_0 compressed SmolLM2-135M, dequantized for the transformers engine) and its modifiers.
The choice scenarios (``llora router collect``, the base alone and each modifier, serving engine) are collected on
the same training rows as the depth scenarios. Fresh task data (seed 7, other rows than the demo's) per domain:
``llora router distill`` on the training rows the base answers correctly (its checker), ``llora router collect
--depth`` on the first
``--collect-rows`` training rows per domain, ``llora router fit SCEN --depth DSCEN --method M``, and
``llora router eval --depth`` on the family-level held-out split (``--test-rows`` per domain: queries none of the
earlier steps saw). Prints the JSON report's key figures and a markdown table; writes the Pareto plot.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", required=True, help="LLORA_HOME that `llora demo` filled")
    ap.add_argument("--domains", default="code", help="SmolLM2-135M answers code best (base 23%% held out)")
    ap.add_argument("--distill-rows", type=int, default=64, help="training rows per domain the base answers for distill")
    ap.add_argument("--collect-rows", type=int, default=16, help="training rows per domain for the depth scenarios")
    ap.add_argument("--test-rows", type=int, default=40, help="held-out rows per domain")
    ap.add_argument("--method", default="fbc")
    ap.add_argument("--sweep-every", type=int, default=3)
    ap.add_argument("--pooled", type=int, default=16)
    ap.add_argument("--distill-config", default="", help="KEY=VALUE,... for `llora router distill` (e.g. steps=1000)")
    ap.add_argument("--fit-config", default="", help="KEY=VALUE,... for `llora router fit`")
    ap.add_argument("--plot", default=str(REPO / "docs" / "img" / "router_depth_pareto.png"))
    ap.add_argument("--tag", default=time.strftime("%Y%m%d%H%M"))
    args = ap.parse_args()
    os.environ["LLORA_HOME"] = args.home

    from llora_cli.data import make_dataset
    from llora_cli.router.collect import collect
    from llora_cli.router.depth.distill import distill
    from llora_cli.router.depth.evaluation import evaluate_depth
    from llora_cli.router.depth.scenarios import collect_depth
    from llora_cli.router.fit import fit
    from llora_store import open_store

    store = open_store()
    bases = [a for a in store.list() if a.kind == "compressed" and a.state == "deployed"]
    if not bases:
        sys.exit("no deployed compressed base in this home: run `llora demo` with LLORA_HOME set to it first")
    base = bases[-1]
    domains = args.domains.split(",")
    timings = {}
    data = {}
    n = max(args.distill_rows, args.collect_rows)
    for d in domains:
        data[d] = make_dataset(store, d, n, seed=7, n_test=args.test_rows, name=f"depth-{d}-{args.tag}").id
    t = time.perf_counter()
    layers = distill(store, base.id, list(data.values()), limit=args.distill_rows, name=f"layers-{args.tag}",
                     config=[c for c in args.distill_config.split(",") if c],
                     progress=lambda s, i, k: print(f"distill {s} {i}/{k}", file=sys.stderr, flush=True))
    timings["distill_s"] = round(time.perf_counter() - t, 1)
    print(json.dumps({"distill": {k: v for k, v in layers.artifact.meta.items() if k in ("rows", "correct", "tokens",
                                                                                          "layers", "figures")}}),
          flush=True)
    t = time.perf_counter()
    dscen = collect_depth(store, base.id, layers.artifact.id, list(data.values()), limit=args.collect_rows,
                          name=f"depth-scen-{args.tag}",
                          progress=lambda i, k: print(f"collect {i}/{k}", file=sys.stderr, flush=True))
    timings["collect_s"] = round(time.perf_counter() - t, 1)
    print(json.dumps({"depth_scenarios": dscen.summary}), flush=True)
    t = time.perf_counter()
    scen = collect(store, base.id, list(data.values()), limit=args.collect_rows, name=f"choice-scen-{args.tag}",
                   progress=lambda i, k: print(f"choice collect {i}/{k}", file=sys.stderr, flush=True)).artifact
    timings["choice_collect_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    router = fit(store, scen.id, method=args.method, name=f"depth-router-{args.tag}", depth=dscen.artifact.id,
                 config=[c for c in args.fit_config.split(",") if c])
    timings["fit_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    rep = evaluate_depth(store, router.artifact.id, list(data.values()), config=[
        f"pooled={args.pooled}", f"sweep_every={args.sweep_every}"], plot=Path(args.plot),
        progress=lambda s: print(f"eval: {s}", file=sys.stderr, flush=True))
    timings["eval_s"] = round(time.perf_counter() - t, 1)
    rep["timings"] = timings
    rep["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    out = Path(args.home) / f"router_depth_{args.tag}.json"
    out.write_text(json.dumps(rep, indent=1))
    print(f"report: {out}")
    print(f"\n| method | layers replaced | accuracy (n={rep['n']}) [95% CI] | vs full [paired bootstrap 95%] | "
          "decode x (b1) | decode x (b8) |")
    print("|---|---|---|---|---|---|")
    for name, m in rep["methods"].items():
        print(f"| {name} | {m['layers_replaced_mean']:.2f} | {m['correct']}/{m['n']} = {m['accuracy']:.1%} "
              f"[{m['ci95'][0]:.1%}, {m['ci95'][1]:.1%}] | {m['vs_full']['difference']:+.1%} "
              f"[{m['vs_full']['ci95'][0]:+.1%}, {m['vs_full']['ci95'][1]:+.1%}] | {m['batch1']['decode_speedup']:.2f} | "
              f"{m['batch8']['decode_speedup']:.2f} |")
    print("\nsweep (fixed k): method k accuracy decode_x_b1")
    for name, per_k in rep["sweep"].items():
        for k, v in per_k.items():
            print(f"  {name} k={k}: {v['correct']}/{v['n']} x{v['batch1']['decode_speedup']:.2f}")
    print(json.dumps({"goal": rep["goal"], "timings": timings, "router_k": rep["router_k"]}))


if __name__ == "__main__":
    main()
