"""The two delivery paths of a fused classifier on SmolLM2-135M (issue 15): bytes shipped, time to a first answer.

Usage::

    .venv/bin/python benchmarks/classify_delivery.py [--home DIR] [--steps 40]

Sender (``--home``, or a fresh home): the embedded SmolLM2-135M, the intent data, a classifier **training adapter**
(``llora train --task classify --kind adapter``; its quality is not the point here), merged with
``--keep-adapter --dtype fp32`` into the fused classifier (in bf16 the merge's logit check refuses it:
docs/benchmarks.md). ``llora plan --delivery`` gives its recommendation; then it is exported both ways
(``llora export --delivery fused`` and ``--delivery low-bandwidth``).

Receivers, each a fresh store, every step a ``llora`` command in its own process (start-up and imports included):

- fused: ``llora import`` of the whole checkpoint, then ``llora classify MERGED TEXT``;
- low-bandwidth: the receiver's own copy of the base is registered first (``llora bases add smollm2``, timed apart:
  it is there before any delivery), then ``llora import`` (the rebuild: the streaming merge against that base and
  the content-hash check), then ``llora classify``.

Reported: bytes of each export directory, seconds of each step, time to a first answer (import + first classify),
whether both receivers give the sender's label and probabilities. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TEXT = "Could you switch the hallway lights off?"


def llora(home: Path, *args) -> tuple[dict | list, float]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", "from llora_cli.cli.entry import main; main()", *map(str, args),
                          "--json"], env={**os.environ, "LLORA_HOME": str(home)}, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"llora {' '.join(map(str, args))} failed: {out.stderr}")
    return json.loads(out.stdout), round(seconds, 2)


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", type=Path)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--out", type=Path, default=REPO / "docs/results/classify_delivery.json")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="llora-delivery-"))
    home = args.home or root / "sender"
    bases, _ = llora(home, "bases", "list")
    if not any(a["name"] == "smollm2" for a in bases):
        llora(home, "bases", "add", "smollm2", "--name", "smollm2")
    data = "intent-delivery"
    sets, _ = llora(home, "datasets", "list")
    if not any(a["name"] == data for a in sets):
        llora(home, "data", "make", "intent", "--n", 220, "--n-test", 22, "--name", data)
    trained, train_s = llora(home, "train", "--base", "smollm2", "--data", data, "--task", "classify", "--kind",
                             "adapter", f"max_steps={args.steps}")
    merged, merge_s = llora(home, "merge", trained["name"], "--keep-adapter", "--dtype", "fp32")
    name = merged["merged"]["name"]
    plan, _ = llora(home, "plan", name, "--delivery")
    sender, _ = llora(home, "classify", name, TEXT)
    fused_dir, lowbw_dir = root / "fused", root / "lowbw"
    llora(home, "export", name, "--to", fused_dir, "--delivery", "fused")
    llora(home, "export", name, "--to", lowbw_dir, "--delivery", "low-bandwidth")
    mid = merged["merged"]["id"]
    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
              "sender": {"train_s": train_s, "merge_s": merge_s, "merge": merged, "plan": plan}, "paths": {}}
    for path, src in (("fused", fused_dir / mid), ("low-bandwidth", lowbw_dir / mid)):
        rx = root / f"rx-{path}"
        row = {"bytes_shipped": dir_bytes(src), "files": sorted(p.name for p in src.iterdir())}
        if path == "low-bandwidth":
            _, row["base_registration_s"] = llora(rx, "bases", "add", "smollm2", "--name", "smollm2")
        imported, row["import_s"] = llora(rx, "import", src)
        got, row["first_classify_s"] = llora(rx, "classify", imported["name"], TEXT)
        row["time_to_first_answer_s"] = round(row["import_s"] + row["first_classify_s"], 2)
        row["content_hash_equal"] = imported["content_hash"] == merged["merged"]["content_hash"]
        row["same_answer"] = got["predictions"][0] == sender["predictions"][0]
        report["paths"][path] = row
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print("\n| path | bytes shipped | import (s) | first classify (s) | time to first answer (s) | same answer |")
    print("|---|---|---|---|---|---|")
    for path, r in report["paths"].items():
        print(f"| {path} | {r['bytes_shipped']:,} | {r['import_s']} | {r['first_classify_s']} | "
              f"{r['time_to_first_answer_s']} | {r['same_answer']} |")


if __name__ == "__main__":
    main()
