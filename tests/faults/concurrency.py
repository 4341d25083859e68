"""16 worker processes against one catalog for a bounded time. Each runs real `llora` commands one after another
through the CLI's own app (its error mapping included) in its own process, which imports llora once (a fresh
interpreter per command would spend the 2 cores here starting Python rather than using the catalog).

Roles (16 workers): 4 race in pairs to merge the same adapter (the two of a pair start together, at a barrier),
1 trains tiny runs, 3 deploy and retire the same base, 3 add artifacts (datasets, adapters, and a base that is
already registered: an expected refusal) and discard their datasets, 3 list and show, 2 verify.

Every command's exit code and output is recorded; ``classify`` sorts each into ok, an expected refusal (a clear
message, exit 1, for the operations whose race has a loser) or unexpected. Used by tests/faults/test_concurrency.py.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from faults.harness import LLORA

MERGE_PAIRS = 2
ADAPTERS_PER_PAIR = 4  # more than the rounds a pair can run in the time bound on 2 cores
ROLES = (["merge"] * (2 * MERGE_PAIRS) + ["train"] + ["deploy"] * 3 + ["add"] * 3 + ["list"] * 3 + ["verify"] * 2)
assert len(ROLES) == 16


@dataclass(frozen=True)
class Op:
    worker: int
    role: str
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    start: float
    end: float
    round: int | None = None  # merge races: pair * 100 + round, shared by the two merges of a race

    def to_json(self) -> dict:
        return {"worker": self.worker, "args": list(self.args), "returncode": self.returncode,
                "stderr": self.stderr[-4000:], "round": self.round}


def env_for(home: Path, url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LLORA_DB_URL", "LLORA_DEBUG")}
    env.update(LLORA_HOME=str(home), COLUMNS="200", OMP_NUM_THREADS="1")
    if url:
        env["LLORA_DB_URL"] = url
    return env


def setup(home: Path, url: str | None, model_dir: Path, adapter_dir: Path) -> None:
    """A base 'tiny', a dataset 'auto' and MERGE_PAIRS x ADAPTERS_PER_PAIR trained adapters 'ad-P-R'."""
    def ok(*args):
        r = subprocess.run([LLORA, *map(str, args)], capture_output=True, text=True, env=env_for(home, url))
        assert r.returncode == 0, r.stderr

    ok("bases", "add", model_dir, "--name", "tiny")
    ok("data", "make", "automation", "--n", "24", "--name", "auto")
    for p, r in itertools.product(range(MERGE_PAIRS), range(ADAPTERS_PER_PAIR)):
        ok("adapters", "import", adapter_dir, "--base", "tiny", "--name", f"ad-{p}-{r}")


class Worker:
    """One worker process: runs `llora` commands through the CLI's own app (its error mapping included), one after
    another, in this process, so that it starts Python and imports llora once rather than per command."""

    def __init__(self, i: int, home: Path, url: str | None, model_dir: Path, adapter_dir: Path, deadline: float,
                 barriers, go, out: Path) -> None:
        self.i, self.role, self.model_dir, self.adapter_dir = i, ROLES[i], model_dir, adapter_dir
        self.deadline, self.barriers, self.go, self.out = deadline, barriers, go, out
        os.environ.update(env_for(home, url))
        if url is None:
            os.environ.pop("LLORA_DB_URL", None)
        self.ops: list[Op] = []

    def llora(self, *args, round_: int | None = None) -> Op:
        import sys
        import traceback

        from typer.testing import CliRunner

        from llora_cli.cli.main import app

        args = tuple(map(str, args))
        sys.argv = ["llora", *args]  # the command line events record
        start = time.time()
        r = CliRunner().invoke(app, list(args))
        stderr = r.stderr
        if r.exception is not None and not isinstance(r.exception, SystemExit):  # escaped the CLI's error mapping
            stderr += "".join(traceback.format_exception(r.exception))
        op = Op(self.i, self.role, args, r.exit_code, r.stdout, stderr, start, time.time(), round_)
        self.ops.append(op)
        return op

    def run(self) -> None:
        try:
            self._loop()
        finally:
            self.out.write_text("".join(json.dumps(dataclasses.asdict(o)) + "\n" for o in self.ops))

    def _loop(self) -> None:
        role, i = self.role, self.i
        if role == "merge":
            pair = i // 2
            for r in range(ADAPTERS_PER_PAIR):
                if self.barriers[pair].wait(timeout=900) == 0:  # one of the two decides for both
                    self.go[pair] = int(time.time() < self.deadline)
                self.barriers[pair].wait(timeout=900)
                if not self.go[pair]:
                    return
                self.llora("merge", f"ad-{pair}-{r}", "--json", round_=pair * 100 + r)
            return
        for k in itertools.count():
            if time.time() >= self.deadline:
                return
            if role == "train":
                self.llora("train", "--base", "tiny", "--data", "auto", "--name", f"t{i}-{k}", "max_steps=2", "--json")
            elif role == "deploy":
                self.llora("deploy" if k % 2 == 0 else "retire", "tiny", "--json")
            elif role == "add":
                what = k % 4
                if what == 0:
                    self.llora("data", "make", "reasoning", "--n", "6", "--seed", str(i * 1000 + k), "--name",
                               f"d{i}-{k}", "--json")
                elif what == 1:
                    self.llora("discard", f"d{i}-{k - 1}", "--yes", "--json")
                elif what == 2:
                    self.llora("adapters", "import", self.adapter_dir, "--base", "tiny", "--name", f"imp{i}-{k}",
                               "--json")
                else:
                    self.llora("bases", "add", self.model_dir, "--name", f"dup{i}-{k}", "--json")
            elif role == "list":
                args = [("adapters", "list"), ("bases", "list"), ("show", "tiny"), ("history", "tiny"),
                        ("lineage", "tiny"), ("datasets", "list")][(k + i) % 6]
                self.llora(*args, "--json")
            elif role == "verify":
                self.llora("verify", "tiny" if k % 2 == 0 else "auto", "--json")


def _worker_main(*args) -> None:
    Worker(*args).run()


def run(home: Path, url: str | None, model_dir: Path, adapter_dir: Path, seconds: float, work: Path) -> list[Op]:
    """Start the 16 worker processes; they start commands for ``seconds`` after all are up. Returns every op."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    barriers = [ctx.Barrier(2) for _ in range(MERGE_PAIRS)]
    go = ctx.Array("i", MERGE_PAIRS)
    ready = ctx.Barrier(len(ROLES) + 1)
    deadline = ctx.Value("d", 0.0)
    outs = [work / f"worker-{i}.jsonl" for i in range(len(ROLES))]
    procs = [ctx.Process(target=_start, args=(ready, deadline, i, home, url, model_dir, adapter_dir, barriers, go,
                                              outs[i]), name=f"llora-worker-{i}") for i in range(len(ROLES))]
    for p in procs:
        p.start()
    ready.wait(timeout=600)  # every worker has imported llora: the clock starts now, for all of them
    deadline.value = time.time() + seconds
    ready.wait(timeout=600)
    for p in procs:
        p.join(timeout=1800)
    codes = [p.exitcode for p in procs]
    assert codes == [0] * len(ROLES), f"worker processes exited {codes}"
    ops = [Op(**{**d, "args": tuple(d["args"])}) for f in outs for d in map(json.loads, f.read_text().splitlines())]
    return sorted(ops, key=lambda o: o.start)


def _start(ready, deadline, i, home, url, model_dir, adapter_dir, barriers, go, out) -> None:
    import llora_cli.cli.main  # noqa: F401  (imported before the clock starts)

    if ROLES[i] in ("merge", "train"):
        import torch  # noqa: F401
    ready.wait(timeout=600)
    ready.wait(timeout=600)
    _worker_main(i, home, url, model_dir, adapter_dir, deadline.value, barriers, go, out)


def refusal(op: Op) -> str | None:
    """The expected refusal this op's output shows (exit 1, a clear message), or None."""
    if op.returncode != 1 or "Traceback" in op.stderr:
        return None
    err = " ".join(op.stderr.split())
    kind = op.args[0]
    if kind == "deploy" and "cannot deploy a base in state 'deployed'" in err:
        return "deploy: already deployed"
    if kind == "retire" and ("cannot retire a base in state 'retired'" in err or
                             "cannot retire a base in state 'ready'" in err):
        return "retire: not deployed"
    if op.args[:2] == ("bases", "add") and "this content is already registered as base 'tiny'" in err:
        return "bases add: same content"
    ad = f"adapter 'ad-{op.round // 100}-{op.round % 100}'" if op.round is not None else None
    if kind == "merge" and ad and ad in err and ("while this merge ran" in err or
                                                 "merge needs an adapter in state 'trained'" in err):
        return "merge: the other one won"
    return None


def classify(ops: list[Op]) -> dict[str, list[Op]]:
    out: dict[str, list[Op]] = {"ok": [], "refused": [], "unexpected": []}
    for op in ops:
        if "database is locked" in op.stdout + op.stderr or "Traceback" in op.stdout + op.stderr:
            out["unexpected"].append(op)
        elif op.returncode == 0:
            out["ok"].append(op)
        elif refusal(op):
            out["refused"].append(op)
        else:
            out["unexpected"].append(op)
    return out


def summary(ops: list[Op]) -> dict:
    c = classify(ops)
    by_cmd: dict[str, dict[str, int]] = {}
    for key, group in c.items():
        for op in group:
            name = " ".join(op.args[:2]) if op.args[0] in ("bases", "adapters", "data", "datasets") else op.args[0]
            by_cmd.setdefault(name, {"ok": 0, "refused": 0, "unexpected": 0})[key] += 1
    return {"operations": len(ops), **{k: len(v) for k, v in c.items()}, "by_command": by_cmd,
            "unexpected_ops": [o.to_json() for o in c["unexpected"]],
            "refusals": sorted({refusal(o) for o in c["refused"]})}


if __name__ == "__main__":  # a look by hand: python tests/faults/concurrency.py HOME MODEL_DIR ADAPTER_DIR SECONDS
    import sys

    home, model, adapter, seconds = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4])
    setup(home, None, model, adapter)
    print(json.dumps(summary(run(home, None, model, adapter, seconds, home.parent)), indent=1))
