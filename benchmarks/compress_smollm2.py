"""Compression figures for SmolLM2-135M-Instruct: every method, size, quality and cost.

Usage: python benchmarks/compress_smollm2.py [--eval-n 16] [--home DIR] [--methods nf4,int8,...]
Registers the built-in smollm2 base in a fresh store (DIR, default a temp dir), then runs
`llora compress` once per method, each in its own process (peak RSS = that process's VmHWM,
wall time includes the quality measurement). Prints one JSON record per method and a
markdown table for docs/benchmarks.md. The source's figures are measured once and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time

METHODS = ["gguf-f16", "gguf-q8_0", "gguf-q4_0", "gguf-q4_k", "int8", "nf4"]

RUN = textwrap.dedent('''
    import json, sys, time
    t = time.perf_counter()
    from llora_store import open_store
    from llora_cli.compress import compress
    r = compress(open_store(), "smollm2", sys.argv[1], eval_n=int(sys.argv[2]), zstd=True)
    hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    print(json.dumps({**r.to_json(), "wall_seconds": time.perf_counter() - t, "peak_rss_mb": hwm / 1024,
                      "compression": r.compressed.meta["compression"]}))
''')


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--eval-n", type=int, default=16)
    ap.add_argument("--home", default=None)
    ap.add_argument("--methods", default=",".join(METHODS))
    args = ap.parse_args()
    home = args.home or tempfile.mkdtemp(prefix="llora-compress-bench-")
    env = {**os.environ, "LLORA_HOME": home}
    added = subprocess.run([sys.executable, "-c", "from llora_cli.cli.entry import main; main()", "bases", "add",
                            "smollm2", "--json"], env=env, capture_output=True, text=True)
    if added.returncode != 0 and "already registered" not in added.stderr:  # a rerun with --home reuses it
        raise SystemExit(added.stderr)
    rows = []
    for method in args.methods.split(","):
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", RUN, method, str(args.eval_n)], env=env, capture_output=True,
                             text=True)
        if out.returncode != 0:
            raise SystemExit(f"{method} failed:\n{out.stderr[-3000:]}")
        rec = json.loads(out.stdout.strip().splitlines()[-1])
        rec["process_seconds"] = time.perf_counter() - start
        print(json.dumps(rec), flush=True)
        rows.append(rec)
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"eval rows per task: {args.eval_n}\n")
    print("| method | size | x bf16 | zstd | ppl source -> compressed | KL | reasoning | automation | code "
          "| compress s | total s | peak RSS |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        q, c = r["quality"], r["compression"]
        acc = [f"{a['source']:.0%} -> {a['compressed']:.0%}" for a in
               (q["accuracy"].get(t, {"source": 0, "compressed": 0}) for t in ("reasoning", "automation", "code"))]
        z = c.get("zstd") or {}
        print(f"| {r['method']} | {r['bytes'] / 2**20:.1f} MiB | {r['ratio_vs_bf16']:.3f} | {z.get('ratio', '-')} "
              f"| {q['perplexity']['source']:.3f} -> {q['perplexity']['compressed']:.3f} "
              f"({q['perplexity']['delta_pct']:+.2f}%) | {q['kl_mean']:.4f} | {' | '.join(acc)} "
              f"| {c['seconds']:.1f} | {r['wall_seconds']:.0f} | {r['peak_rss_mb']:.0f} MB |")


if __name__ == "__main__":
    main()
