"""Which steps and learning rate the demo's modifiers need (issue 13: a router the demo can fit).

Usage: python benchmarks/demo_modifier_settings.py --home HOME DOMAIN KEY=VALUE[,KEY=VALUE...] [...]
e.g.   python benchmarks/demo_modifier_settings.py --home /tmp/demo automation \
           max_steps=12,batch_size=4 max_steps=24,batch_size=4,learning_rate=2e-3

HOME is a store `llora demo` has filled (its compressed base and its `demo-data-DOMAIN` dataset). Per setting: a
modifier of DOMAIN trained on the compressed base with `llora train --kind modifier`'s defaults overridden by the
setting (what the demo does), then scored greedily on the transformers engine by the task's checker on the dataset's
held-out split (families the training rows never used) and on its first 24 training rows (the rows the demo's
router collects scenarios on are training rows). Nothing is recorded on the artifacts; the modifiers stay in HOME.
Prints one JSON line per setting: training seconds, tokens/s, final loss, k/n on both splits.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--home", required=True)
    ap.add_argument("domain")
    ap.add_argument("settings", nargs="+")
    args = ap.parse_args()
    os.environ["LLORA_HOME"] = args.home

    from llora_cli.evaluate import evaluate
    from llora_cli.loading import reuse_dequantized
    from llora_cli.train import train
    from llora_cli.trainconfig import load_config
    from llora_store import open_store

    store = open_store()
    base = next(a for a in store.artifacts(kind="compressed") if a.state != "discarded")
    data = next(a for a in store.artifacts(kind="dataset") if a.meta.get("task") == args.domain and a.meta.get("demo"))
    with reuse_dequantized():
        for setting in args.settings:
            t0 = time.time()
            r = train(store, base_ref=base.id, data_ref=data.id, kind="modifier", domain=args.domain,
                      name=store.unique_name(f"settings-{args.domain}"), config=load_config(None, setting.split(",")))
            seconds = time.time() - t0
            held = evaluate(store, r.artifact.id, data.id, record=False)
            seen = evaluate(store, r.artifact.id, data.id, split="train", limit=24, record=False)
            print(json.dumps({"domain": args.domain, "setting": setting, "train_s": round(seconds, 1),
                              "tokens_per_s": r.outcome["tokens_per_s"], "final_loss": r.outcome["final_loss"],
                              "held_out": f"{held.correct}/{held.n}", "training_rows": f"{seen.correct}/{seen.n}"}),
                  flush=True)


if __name__ == "__main__":
    main()
