"""The full crash run of issue 16: each lifecycle command SIGKILLed at N seeded random moments, the home checked after
each kill (tests/faults/harness.py), figures for docs/reliability.md.

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python scripts/crash_trials.py --trials 30 --seed 16 --out crash.json

Prints one line per trial to stderr and a table to stdout: trials per command, how many were killed (the others had
finished), the kill points reached (the target's state and the debris `llora doctor` found), violations (goal 0),
stale sidecars (noted, not a violation: the catalog is the truth). Exits 1 if any invariant was violated.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import tiny  # noqa: E402
from faults import harness  # noqa: E402


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, {platform.system()} {platform.release()}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=30, help="killed trials per command")
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--commands", default=",".join(harness.COMMANDS))
    ap.add_argument("--out", type=Path, help="write every trial as JSON here")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="llora-crash-"))
    started = time.time()
    load_before = os.getloadavg()
    try:
        model = tiny.build_tiny_llama(work / "tiny-llama")
        adapter = tiny.build_tiny_adapter(model, work / "tiny-lora")
        template = harness.build_template(work, model, adapter)
        results: dict[str, list[harness.Trial]] = {}
        durations = {}

        def show(t: harness.Trial) -> None:
            mark = "VIOLATION " + "; ".join(t.violations) if t.violations else "ok"
            print(f"{t.command:9} #{t.index:<3} kill at {t.delay if t.delay is None else round(t.delay, 2)!s:>6} s "
                  f"ran {t.seconds:6.2f} s  {t.point:60} {mark}", file=sys.stderr, flush=True)

        for command in args.commands.split(","):
            durations[command], results[command] = harness.run_command_trials(
                template, command, args.trials, args.seed, work, on_trial=show)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    took = time.time() - started
    print(f"machine: {machine()}; load average {load_before[0]:.2f} at start; {took / 60:.1f} min")
    print(f"command: OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python scripts/crash_trials.py {' '.join(sys.argv[1:])}")
    print("| command | run (s) | trials killed | finished first | kill points reached | violations | stale sidecars |")
    print("|---|---|---|---|---|---|---|")
    total_v = 0
    for command, trials in results.items():
        killed = [t for t in trials[1:] if t.killed]
        points = collections.Counter(t.point for t in trials[1:])
        v = sum(len(t.violations) for t in trials)
        total_v += v
        stale = sum(bool(t.stale_sidecars) for t in trials)
        shown = "; ".join(f"{p} ({n})" for p, n in sorted(points.items(), key=lambda kv: -kv[1]))
        print(f"| {command} | {durations[command]:.1f} | {len(killed)} | {len(trials) - 1 - len(killed)} | {shown} "
              f"| {v} | {stale} |")
    if args.out:
        args.out.write_text(json.dumps({"machine": machine(), "seed": args.seed, "trials": args.trials,
                                        "durations": durations, "minutes": took / 60,
                                        "results": {c: [t.to_json() for t in ts] for c, ts in results.items()}},
                                       indent=1) + "\n")
    return 1 if total_v else 0


if __name__ == "__main__":
    sys.exit(main())
