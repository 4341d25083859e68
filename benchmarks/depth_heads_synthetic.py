"""What FBC, DPO and ORPO depth heads choose on a depth scenario set whose paths are known (docs/router.md,
"Depth heads"): 20 automation and 20 reasoning queries from the generators, automation paths {3} 1.0, {2,3} 1.0,
{1,2,3} 0.5, reasoning {0} 1.0, {0,1} 0.98, 4 layers; heads fitted on all 40 (steps=200) and scored on them.

Usage: .venv/bin/python benchmarks/depth_heads_synthetic.py [fbc dpo orpo]
"""

from __future__ import annotations

import json
import random
import sys

import torch

from llora_cli.router import encoder as enc
from llora_cli.router.depth import fitting
from llora_cli.router.fit import FitConfig
from llora_cli.tasks import automation, reasoning

PATHS = {"automation": [{"added": 3, "layers": [3], "score": 1.0}, {"added": 2, "layers": [2, 3], "score": 1.0},
                        {"added": 1, "layers": [1, 2, 3], "score": 0.5}],
         "reasoning": [{"added": 0, "layers": [0], "score": 1.0}, {"added": 1, "layers": [0, 1], "score": 0.98}]}


def main(methods: list[str]) -> None:
    rng = random.Random(0)
    queries = [("automation", automation.generate(rng)["messages"][1]["content"]) for _ in range(20)]
    queries += [("reasoning", reasoning.generate(rng)["messages"][0]["content"]) for _ in range(20)]
    rows = [{"query": q, "domain": d, "depth": {"steps": PATHS[d]}} for d, q in queries]
    emb = enc.shared().encode([q for _, q in queries])
    x = torch.from_numpy(emb)
    for method in methods:
        layer_head, ratio_head, _ = fitting.train_depth_heads(emb, rows, 4, method, FitConfig.parse(["steps=200"]))
        picked = fitting.predict(layer_head, ratio_head, x, 4)
        print(json.dumps({"method": method, **fitting.figures(picked, rows),
                          "pairs": fitting.pairs_ordered(layer_head, ratio_head, x, rows, 4)}))


if __name__ == "__main__":
    main(sys.argv[1:] or ["fbc", "dpo", "orpo"])
