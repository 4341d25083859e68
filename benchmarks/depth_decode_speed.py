"""Decode speed of SmolLM2-135M with k decoder layers replaced by layer adapters (issue 14: what depth can buy).

Usage::

    .venv/bin/python benchmarks/depth_decode_speed.py --home DIR --layers LAYER_ADAPTERS [--ks 0,1,2,3,4,6,8,10,12,15]
        [--tokens 64] [--repeats 5] [--report router_depth.json [--plot pareto.png]] [--timing curve.json]

``--home``: a llora home with a deployed compressed base (``llora demo``) and a layer-adapter set distilled on it
(``llora router distill``). The base is loaded as ``llora router eval --depth`` loads it (the transformers engine,
fp32) and timed with ``evaluation.time_depths`` (greedy ``generate`` with the KV cache, ``--tokens`` forced tokens
minus a one-token generate, the k measured in rounds of alternating order, median of ``--repeats``) at batch 1 and 8,
the last k layers replaced (which layers does not change the cost: each adapter is the same size). With
``--report`` (a ``router eval --depth`` report) it also gives each method's decode speed-up at its own k
distribution (the router's histogram for every method but the per-query ceiling), the router's time added as the
evaluation adds it (``evaluation._cost``). With ``--plot PNG`` too, it redraws the report's Pareto plot
(``evaluation.write_pareto``) with every method and swept k priced on this curve: each method at its own k histogram
(``layers_replaced_histogram``; reports written before it had one price the methods at the router's k, and the
per-query ceiling at a histogram with its mean k: floor and ceil of the mean, which prices as the mean does where the
step time is linear in k). Prints JSON and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", required=True)
    ap.add_argument("--layers", required=True, help="the layer-adapter set (name or id)")
    ap.add_argument("--ks", default="0,1,2,3,4,6,8,10,12,15")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--report", help="a router eval --depth report (JSON) to price its methods")
    ap.add_argument("--plot", help="with --report: redraw its Pareto plot (PNG) with the speeds measured here")
    ap.add_argument("--timing", help="the JSON this script printed before: use its curve instead of measuring again")
    args = ap.parse_args()
    os.environ["LLORA_HOME"] = args.home

    from llora_cli.loading import load_model
    from llora_cli.router.depth import distill
    from llora_cli.router.depth.evaluation import _cost, time_depths
    from llora_store import open_store

    store = open_store()
    layer_set = store.resolve(args.layers, kinds=("layer-adapters",))
    base = store.resolve(layer_set.meta["base"]["id"])
    ks = [int(k) for k in args.ks.split(",")]
    out = {"base": base.name, "layer_set": layer_set.name, "tokens": args.tokens, "repeats": args.repeats,
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "timing": {}}
    if args.timing:  # a curve measured before (decode_s_per_step from its rounded tokens/s: batch / tokens/s)
        old = json.loads(Path(args.timing).read_text())
        missing = [k for k in ks if str(k) not in old["timing"]]
        if missing:
            raise SystemExit(f"{args.timing} has no timing for k {missing}")
        out.update(tokens=old["tokens"], repeats=old["repeats"], machine=old["machine"], timing_from=args.timing)
        per_batch = {b: {k: {**old["timing"][str(k)][f"batch{b}"], "decode_s_per_step":
                             b / old["timing"][str(k)][f"batch{b}"]["decode_tokens_per_s"]} for k in ks} for b in (1, 8)}
    else:
        adapters = distill.load(store, layer_set.id, base)
        tokenizer, model, _ = load_model(store.path_of(base.id))
        model.eval()
        count = len(adapters)
        sets = {k: list(range(count - k, count)) for k in ks}
        prompt = tokenizer("Write a function that returns the sum of the even numbers in a list.")["input_ids"]
        per_batch = {b: time_depths(tokenizer, model, adapters, prompt, sets, batch=b, tokens=args.tokens,
                                    repeats=args.repeats) for b in (1, 8)}
    for k in ks:
        out["timing"][k] = {f"batch{b}": {"decode_tokens_per_s": per_batch[b][k]["decode_tokens_per_s"],
                                          "decode_speedup": round(per_batch[b][0]["decode_s_per_step"]
                                                                  / per_batch[b][k]["decode_s_per_step"], 4),
                                          "prefill_ms": per_batch[b][k]["prefill_ms"]} for b in (1, 8)}
    print("| k replaced | decode tok/s, batch 1 | x | decode tok/s per batch, batch 8 | x | prefill ms, batch 1 |")
    print("|---|---|---|---|---|---|")
    for k in ks:
        t = out["timing"][k]
        print(f"| {k} | {t['batch1']['decode_tokens_per_s']} | {t['batch1']['decode_speedup']:.3f} | "
              f"{t['batch8']['decode_tokens_per_s']} | {t['batch8']['decode_speedup']:.3f} | {t['batch1']['prefill_ms']} |")
    if args.report:
        rep = json.loads(Path(args.report).read_text())
        hist = {int(k): n for k, n in rep["router_k"]["histogram"].items()}
        missing = sorted(set(hist) - set(ks))
        if missing:
            raise SystemExit(f"the router's k {missing} were not timed: add them to --ks")
        ks_router = [k for k, n in sorted(hist.items()) for _ in range(n)]
        timing = {"tokens": out["tokens"], **{k: {b: per_batch[b][k] for b in (1, 8)} for k in ks}}
        router_ms = {b: rep["router_ms"][f"batch{b}"] for b in (1, 8)}
        priced = {name: {batch: v["decode_speedup"] for batch, v in _cost(ks_router, timing, extra).items()}
                  for name, extra in (("static methods at the router's k", None), ("router (its time added)", router_ms))}
        out["priced"] = priced
        print(json.dumps({"priced": priced}))
        if args.plot:
            out["plot"] = replot(rep, timing, router_ms, ks_router, Path(args.plot))
    print(json.dumps(out))


def histogram_ks(method: dict, name: str, ks_router: list[int], n: int) -> tuple[list[int], str]:
    """The per-query k of a report's method: its own histogram, else (older reports) 0 for full depth, the router's
    for every other method but the ceiling, which is priced at floor/ceil of its mean k (which prices as the mean
    where step time is linear)."""
    hist = method.get("layers_replaced_histogram")
    if hist:
        return [int(k) for k, c in sorted(hist.items(), key=lambda kv: int(kv[0])) for _ in range(c)], "its histogram"
    if name == "full depth":
        return [0] * n, "k = 0"
    if not name.startswith("per-query search"):
        return ks_router, "the router's k histogram"
    total = round(method["layers_replaced_mean"] * n)
    lo, high = divmod(total, n)
    return [lo + 1] * high + [lo] * (n - high), f"its mean k {method['layers_replaced_mean']} (floor/ceil)"


def replot(rep: dict, timing: dict, router_ms: dict, ks_router: list[int], path: Path) -> dict:
    """Re-price every method and swept k of ``rep`` on ``timing`` and redraw its Pareto plot at ``path``."""
    from llora_cli.router.depth.evaluation import ROUTER, SKIP, _cost, write_pareto

    needed = set()
    methods, priced_by = {}, {}
    for name, m in rep["methods"].items():
        ks, how = histogram_ks(m, name, ks_router, rep["n"])
        needed |= set(ks)
        methods[name] = {**m, **_cost(ks, timing, router_ms if name in (ROUTER, SKIP) else None)}
        priced_by[name] = how
    sweep = {name: {k: {**v, **_cost([int(k)] * rep["n"], timing, router_ms if name == ROUTER else None)}
                    for k, v in per_k.items()} for name, per_k in rep["sweep"].items()}
    needed |= {int(k) for per_k in rep["sweep"].values() for k in per_k}
    missing = sorted(needed - {k for k in timing if isinstance(k, int)})
    if missing:
        raise SystemExit(f"the plot needs k {missing} timed: add them to --ks")
    write_pareto({**rep, "methods": methods, "sweep": sweep}, path)
    return {"path": str(path), "priced_by": priced_by,
            "batch1_speedup": {name: m["batch1"]["decode_speedup"] for name, m in methods.items()},
            "sweep_batch1_speedup": {name: {k: v["batch1"]["decode_speedup"] for k, v in per_k.items()}
                                     for name, per_k in sweep.items()}}


if __name__ == "__main__":
    main()
