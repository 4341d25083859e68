"""Decode speed of SmolLM2-135M with k decoder layers replaced by layer adapters (issue 14: what depth can buy).

Usage::

    .venv/bin/python benchmarks/depth_decode_speed.py --home DIR --layers LAYER_ADAPTERS [--ks 0,1,2,3,4,6,8,10,12,15]
        [--tokens 64] [--repeats 5] [--report router_depth.json]

``--home``: a llora home with a deployed compressed base (``llora demo``) and a layer-adapter set distilled on it
(``llora router distill``). The base is loaded as ``llora router eval --depth`` loads it (the transformers engine,
fp32) and timed with ``evaluation.time_depths`` (greedy ``generate`` with the KV cache, ``--tokens`` forced tokens
minus a one-token generate, the k measured in rounds of alternating order, median of ``--repeats``) at batch 1 and 8,
the last k layers replaced (which layers does not change the cost: each adapter is the same size). With
``--report`` (a ``router eval --depth`` report) it also gives each method's decode speed-up at its own k
distribution (the router's histogram for every method but the per-query ceiling), the router's time added as the
evaluation adds it (``evaluation._cost``). Prints JSON and a markdown table.
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
    args = ap.parse_args()
    os.environ["LLORA_HOME"] = args.home

    from llora_cli.loading import load_model
    from llora_cli.router.depth import distill
    from llora_cli.router.depth.evaluation import _cost, time_depths
    from llora_store import open_store

    store = open_store()
    layer_set = store.resolve(args.layers, kinds=("layer-adapters",))
    base = store.resolve(layer_set.meta["base"]["id"])
    adapters = distill.load(store, layer_set.id, base)
    tokenizer, model, _ = load_model(store.path_of(base.id))
    model.eval()
    count = len(adapters)
    ks = [int(k) for k in args.ks.split(",")]
    sets = {k: list(range(count - k, count)) for k in ks}
    prompt = tokenizer("Write a function that returns the sum of the even numbers in a list.")["input_ids"]
    out = {"base": base.name, "layer_set": layer_set.name, "tokens": args.tokens, "repeats": args.repeats,
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "timing": {}}
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
        timing = {"tokens": args.tokens, **{k: {b: per_batch[b][k] for b in (1, 8)} for k in ks}}
        router_ms = {b: rep["router_ms"][f"batch{b}"] for b in (1, 8)}
        priced = {name: {batch: v["decode_speedup"] for batch, v in _cost(ks_router, timing, extra).items()}
                  for name, extra in (("static methods at the router's k", None), ("router (its time added)", router_ms))}
        out["priced"] = priced
        print(json.dumps({"priced": priced}))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
