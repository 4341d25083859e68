"""Router accuracy on SmolLM2-135M: fbc, dpo and orpo vs the oracle, each fixed choice and the nearest centroid.

Usage::

    .venv/bin/python benchmarks/router_accuracy.py --home DIR --base NAME
        --modifier code=NAME --modifier reasoning=NAME --modifier automation=NAME
        [--collect-rows 40] [--test-rows 40] [--eval-limit N] [--engine auto] [--methods fbc,dpo,orpo]

The commands a user runs (`llora router collect|fit|eval`), through their library functions, on a home
where the Q8_0 compressed base and one modifier per domain exist (``benchmarks/domain_accuracy.py`` makes
them). Scenarios are collected on the **training** split of freshly generated task data (seed 1: other rows
than the modifiers were trained on, from the same training families), ``--collect-rows`` per domain, on the
serving engine (llama.cpp for the GGUF base when installed), routing to exactly the given modifiers. Every
router is evaluated on the same held-out queries, never seen by collect or fit: the family-level held-out split
of the seed-0 data (``--test-rows`` per domain: families and phrasings no training row used) and the hand-written
sets ``tests/data/<domain>_handwritten.jsonl`` (registered with ``llora data add --held-out``). Candidates'
answers to the held-out queries are generated once and reused for every router (router eval's outcome cache).

Prints one JSON line per router and a markdown table per scope (overall, each domain): routing accuracy and
end-to-end accuracy with n and 95% Wilson intervals for each router, the oracle, the best fixed choice and the
nearest centroid; and the router's overhead per query (batch 1, encoder included).
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
DOMAINS = ("code", "reasoning", "automation")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", required=True, help="LLORA_HOME holding the base and the modifiers")
    ap.add_argument("--base", required=True, help="the compressed base the modifiers run on")
    ap.add_argument("--modifier", action="append", default=[], metavar="DOMAIN=NAME", required=True)
    ap.add_argument("--collect-rows", type=int, default=40, help="training queries per domain for the scenarios")
    ap.add_argument("--test-rows", type=int, default=40, help="family-level held-out queries per domain")
    ap.add_argument("--eval-limit", type=int, default=None,
                    help="first N queries of each held-out set (the split and each hand-written file; default all)")
    ap.add_argument("--engine", default="auto")
    ap.add_argument("--methods", default="fbc,dpo,orpo")
    ap.add_argument("--scenarios", default=None, help="fit on this existing scenario set instead of collecting")
    args = ap.parse_args()
    os.environ["LLORA_HOME"] = args.home

    from llora_cli.data import add_user_file, make_dataset
    from llora_cli.router.collect import collect
    from llora_cli.router.evaluate import evaluate
    from llora_cli.router.fit import fit
    from llora_store import open_store

    store = open_store()
    given = dict(m.split("=", 1) for m in args.modifier)
    domains = [d for d in DOMAINS if d in given]
    mods = [store.resolve(given[d], kinds=("modifier",)) for d in domains]
    run = {"machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores",
           "command": " ".join([".venv/bin/python", *sys.argv]), "load_before": os.getloadavg(),
           "base": args.base, "modifiers": {d: m.name for d, m in zip(domains, mods)}, "routers": []}
    collect_data, eval_data = [], []
    for d in domains:
        collect_data.append(_dataset(store, make_dataset, d, args.collect_rows, seed=1, n_test=20))
        # n=1: only the held-out split is used; it does not depend on n (the rows domain_accuracy.py scores)
        eval_data.append(_dataset(store, make_dataset, d, 1, seed=0, n_test=args.test_rows))
        eval_data.append(add_user_file(store, REPO / f"tests/data/{d}_handwritten.jsonl", task=d, held_out=True,
                                       command="benchmarks/router_accuracy.py").name)
    t0 = time.perf_counter()
    if args.scenarios:
        scen_art = store.resolve(args.scenarios, kinds=("scenario-set",))
        run["collect"] = {"scenario_set": scen_art.name, "reused": True}
    else:
        scen = collect(store, args.base, collect_data, limit=args.collect_rows, engine=args.engine,
                       modifiers=[m.id for m in mods], command="benchmarks/router_accuracy.py")
        scen_art = scen.artifact
        run["collect"] = {"scenario_set": scen_art.name, "rows": scen.rows, "resumed": scen.resumed,
                          "seconds": round(time.perf_counter() - t0, 1), "figures": scen.summary}
    run["collect"]["engine"] = scen_art.meta.get("engine")
    print(json.dumps(run["collect"]), flush=True)
    for method in args.methods.split(","):
        t0 = time.perf_counter()
        fitted = fit(store, scen_art.id, method=method, command="benchmarks/router_accuracy.py")
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        rep = evaluate(store, fitted.artifact.id, eval_data, limit=args.eval_limit, engine=args.engine,
                       command="benchmarks/router_accuracy.py")
        entry = {"method": method, "router": fitted.artifact.name, "fit_seconds": round(fit_s, 1),
                 "eval_seconds": round(time.perf_counter() - t0, 1), "report": rep}
        run["routers"].append(entry)
        print(json.dumps({k: v for k, v in entry.items() if k != "report"} | {"overall": rep["overall"]}), flush=True)
    run["load_after"] = os.getloadavg()
    out = Path(args.home) / "router_accuracy.json"
    out.write_text(json.dumps(run, indent=2))
    print(f"written {out}")
    print(markdown(run))


def _dataset(store, make_dataset, domain: str, n: int, *, seed: int, n_test: int) -> str:
    import hashlib

    from llora_cli import tasks

    generator = hashlib.sha256(Path(tasks.KINDS[domain].__file__).read_bytes()).hexdigest()[:8]
    name = f"router-{domain}-n{n}-t{n_test}-s{seed}-g{generator}"
    if not any(a.name == name for a in store.list(kind="dataset")):
        make_dataset(store, domain, n, seed=seed, n_test=n_test, name=name, command="benchmarks/router_accuracy.py")
    return name


def _cell(fig: dict) -> str:
    if not fig["n"]:
        return "-"
    lo, hi = fig["ci95"]
    return f"{fig['correct']}/{fig['n']} = {fig['accuracy']:.1%} ({lo:.1%}-{hi:.1%})"


def markdown(run: dict) -> str:
    first = run["routers"][0]["report"]
    scopes = ["overall", *first["domains"]]
    lines = []
    for scope in scopes:
        figs = [(e["method"], e["report"]["overall"] if scope == "overall" else e["report"]["domains"][scope])
                for e in run["routers"]]
        choices = figs[0][1]["choices"]
        fixed = {k: v for k, v in choices.items() if k.endswith(" for all") or k.startswith("none")}
        best_fixed = max(fixed, key=lambda k: fixed[k]["end_to_end"]["correct"])
        lines += [f"\n{scope} (n = {figs[0][1]['n']}):\n", "| choice | routing accuracy | end-to-end accuracy |",
                  "|---|---|---|"]
        for method, f in figs:
            c = f["choices"]["router"]
            lines.append(f"| router {method} | {_cell(c['routing'])} | {_cell(c['end_to_end'])} |")
        for label in ("oracle", "nearest centroid", best_fixed):
            c = choices[label]
            name = f"best fixed: {label}" if label == best_fixed else label
            lines.append(f"| {name} | {_cell(c['routing'])} | {_cell(c['end_to_end'])} |")
    over = [(e["method"], e["report"]["overhead_ms"]) for e in run["routers"]]
    lines.append("\noverhead per query (batch 1, encoder included): "
                 + "; ".join(f"{m} median {o['median']} ms, p90 {o['p90']} ms" for m, o in over))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
