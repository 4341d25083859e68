"""Per-domain accuracy: SmolLM2-135M base vs a modifier trained a few minutes on CPU, per task domain.

Usage: python benchmarks/domain_accuracy.py [--n 320] [--n-test 40] [--steps 40] [--lr 1e-3] [--home DIR]
Uses a fresh LLORA_HOME unless --home is given. For each domain (code,
reasoning, automation): make data, eval the base on the held-out split, train
a modifier (r=16, all linear projections, fp32 on CPU), eval the modifier on
the same held-out rows. Prints JSON and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=320)
    ap.add_argument("--n-test", type=int, default=40)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--domains", default="code,reasoning,automation")
    ap.add_argument("--home", default=None)
    args = ap.parse_args()
    os.environ["LLORA_HOME"] = args.home or tempfile.mkdtemp(prefix="llora-acc-")

    from llora_cli.bases import add_base
    from llora_cli.data import make_dataset
    from llora_cli.evaluate import evaluate
    from llora_cli.train import train
    from llora_cli.trainconfig import load_config
    from llora_store import open_store

    store = open_store()
    existing = [a for a in store.list(kind="base") if a.name == "smollm2"]
    base = existing[0].id if existing else add_base(store, "smollm2").id
    rows = []
    for domain in args.domains.split(","):
        ds = make_dataset(store, domain, args.n, seed=0, n_test=args.n_test, name=f"bench-{domain}-{args.n}-{time.time_ns()}")
        before = evaluate(store, base, ds.id)
        cfg = load_config(None, [f"max_steps={args.steps}", f"learning_rate={args.lr}", f"batch_size={args.batch}",
                                 "r=16", "alpha=32", "seed=0"])
        t = time.perf_counter()
        res = train(store, base_ref=base, data_ref=ds.id, kind="modifier", domain=domain, config=cfg)
        train_s = time.perf_counter() - t
        after = evaluate(store, res.artifact.id, ds.id)
        rows.append({
            "domain": domain, "n_train": args.n, "n_test": before.n, "steps": res.outcome["steps"],
            "train_seconds": round(train_s, 1), "tokens_per_s": res.outcome["tokens_per_s"],
            "base_accuracy": before.accuracy, "modifier_accuracy": after.accuracy,
            "base_loss": before.loss, "modifier_loss": after.loss,
            "base_sample": before.samples[0] if before.samples else None,
            "modifier_sample": after.samples[0] if after.samples else None,
        })
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
                      "args": vars(args), "rows": rows}, indent=2))
    print("| domain | n train | n held-out | steps | train time | base acc | modifier acc | base loss | modifier loss |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['domain']} | {r['n_train']} | {r['n_test']} | {r['steps']} | {r['train_seconds']:.0f} s | "
              f"{r['base_accuracy']:.1%} | {r['modifier_accuracy']:.1%} | {r['base_loss']:.3f} | {r['modifier_loss']:.3f} |")


if __name__ == "__main__":
    main()
