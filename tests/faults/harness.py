"""Crash trials: a real `llora` command in its own process, SIGKILLed at a seeded random moment, then the home checked.

One trial: copy a prepared template home, start the command (the installed console script, in a new session so the
kill reaches every process it started), SIGKILL the session after a delay drawn from the trial's seed, then check the
invariants of docs/reliability.md on what is left:

- every artifact in a usable state has its directory and every recorded file, with the recorded size and sha256
  (hashed here with hashlib, not through llora) and the recorded content hash: nothing partial is usable (R10);
- every artifact's events form one chain (create, then each transition of the lifecycle table) ending in its state;
- every lineage, file and event row names an existing artifact;
- the command's target is in one of the states the command may leave it in (before or after, nothing between);
- `llora doctor --json` reports only debris of an interrupted command (a run left in ``training``, staging
  directories, artifact directories without a row, files of a discarded artifact, temporary sidecars), and reports
  each piece of it; it exits 1 exactly when it reports something;
- `llora db gc --json` marks exactly the runs left in ``training`` failed and removes the debris, and changes
  nothing else (every other row, state and file record is as it was); `llora doctor` is then clean (exit 0).

Used by tests/faults/test_crash.py (a few trials per command) and scripts/crash_trials.py (the full run).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

LLORA = str(Path(sys.executable).parent / "llora")
USABLE = frozenset({"ready", "trained", "merged", "deployed", "retired"})
DEBRIS_CHECKS = frozenset({"dead_transient", "orphan_staging", "orphan_dir", "discarded_files", "orphan_temp_file",
                           "stale_sidecar"})
# The states each command may leave its target in when killed: the state before and the state after, nothing else
# (None: the artifact does not exist). SIGKILL runs no handler, so a killed run is never 'failed' before gc.
COMMANDS = ("train", "merge", "compress", "deploy", "retire", "discard", "export", "import")
LEGAL = {
    "train": {None, "training", "trained"},
    "merge": {None, "ready"},
    "compress": {None, "ready"},
    "deploy": {"ready", "deployed"},
    "retire": {"deployed", "retired"},
    "discard": {"trained", "discarded"},
    "import": {None, "trained"},
}


def env_for(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LLORA_DB_URL", "LLORA_DEBUG")}
    return {**env, "LLORA_HOME": str(home), "COLUMNS": "200", "OMP_NUM_THREADS": "1"}


def llora(home: Path, *args, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([LLORA, *map(str, args)], capture_output=True, text=True, env=env_for(home), timeout=timeout)


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


def llora_here(home: Path, *args) -> Result:
    """``llora ARGS`` run in this process (the same Typer app and error mapping as the console script, without
    ~1 s of interpreter start-up per call): the checks after each trial (doctor, db gc) use it."""
    from typer.testing import CliRunner

    from llora_cli.cli.main import app

    r = CliRunner().invoke(app, [str(a) for a in args], env={"LLORA_HOME": str(home), "LLORA_DB_URL": None,
                                                             "LLORA_DEBUG": None, "COLUMNS": "200"})
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return Result(r.exit_code, r.stdout, r.stderr)


def ok_json(home: Path, *args):
    r = llora(home, *args, "--json")
    if r.returncode != 0:
        raise RuntimeError(f"llora {' '.join(map(str, args))} exited {r.returncode}: {r.stderr[-2000:]}")
    return json.loads(r.stdout)


# -- the template ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Template:
    """A home with a base 'tiny', a dataset 'auto' and a trained adapter 'ad'; an export of another adapter."""

    home: Path
    export_dir: Path  # a `llora export` of adapter 'ad2' (on the same base), for the import trials
    export_id: str


def build_template(work: Path, model_dir: Path, adapter_dir: Path) -> Template:
    home = work / "template"
    ok_json(home, "bases", "add", model_dir, "--name", "tiny")
    ok_json(home, "data", "make", "automation", "--n", "24", "--name", "auto")
    ok_json(home, "adapters", "import", adapter_dir, "--base", "tiny", "--name", "ad")
    other = work / "export-source"
    shutil.copytree(home, other)
    ad2 = ok_json(other, "adapters", "import", adapter_dir, "--base", "tiny", "--name", "ad2")
    exports = work / "exports"
    ok_json(other, "export", "ad2", "--to", exports)
    return Template(home, exports / ad2["id"], ad2["id"])


def argv(command: str, template: Template, out: Path) -> list[str]:
    """The command line of a trial; ``out``: a directory outside the home the command may write to."""
    return {
        "train": ["train", "--base", "tiny", "--data", "auto", "--name", "t1", "max_steps=6", "save_steps=2"],
        "merge": ["merge", "ad", "--name", "m1"],
        "compress": ["compress", "tiny", "--method", "gguf-q8_0", "--eval-n", "0", "--name", "c1"],
        "deploy": ["deploy", "tiny"],
        "retire": ["retire", "tiny"],
        "discard": ["discard", "ad", "--yes"],
        "export": ["export", "ad", "--to", str(out)],
        "import": ["import", str(template.export_dir), "--name", "imp"],
    }[command]


def target_name(command: str) -> str | None:
    return {"train": "t1", "merge": "m1", "compress": "c1", "deploy": "tiny", "retire": "tiny", "discard": "ad",
            "import": "imp"}.get(command)


def prepare(command: str, home: Path) -> None:
    """Bring a fresh copy of the template to the state the command starts from (in-process: no llora start-up)."""
    if command == "retire":
        from llora_store import open_store

        store = open_store(home)
        store.deploy("tiny", command="crash harness setup")
        store.engine.dispose()


def new_home(template: Template, dest: Path, command: str) -> Path:
    shutil.copytree(template.home, dest)
    prepare(command, dest)
    return dest


# -- reading a home without llora -----------------------------------------------------------------------------------

@dataclass
class Snapshot:
    artifacts: dict[str, dict]  # id -> {kind, name, state, content_hash}
    files: dict[str, list[tuple]]  # id -> [(path, sha256, bytes, deleted)]
    events: dict[str, list[tuple]]  # id -> [(event, from, to, command)] in order
    lineage: list[tuple]  # (child, parent, role)

    def by_name(self, name: str) -> dict | None:
        return next(({"id": i, **a} for i, a in self.artifacts.items() if a["name"] == name), None)


def snapshot(home: Path, url: str | None = None) -> Snapshot:
    """The catalog's rows, read with plain SQL (not through the library under test); ``url``: a catalog elsewhere
    than the home's SQLite file (LLORA_DB_URL)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url or f"sqlite:///{home / 'catalog.db'}")
    try:
        with engine.connect() as con:
            q = lambda sql: con.execute(text(sql)).all()  # noqa: E731
            arts = {r[0]: {"kind": r[1], "name": r[2], "state": r[3], "content_hash": r[4]}
                    for r in q("SELECT id, kind, name, state, content_hash FROM artifact")}
            files: dict[str, list[tuple]] = {}
            for aid, path, sha, size, deleted in q("SELECT artifact_id, path, sha256, bytes, deleted_at IS NOT NULL "
                                                   "FROM artifact_file ORDER BY artifact_id, path"):
                files.setdefault(aid, []).append((path, sha, size, bool(deleted)))
            events: dict[str, list[tuple]] = {}
            for aid, ev, fr, to, cmd in q("SELECT artifact_id, event, from_state, to_state, command FROM event "
                                          "ORDER BY id"):
                events.setdefault(aid, []).append((ev, fr, to, cmd))
            lineage = sorted(tuple(r) for r in q("SELECT child_id, parent_id, role FROM lineage"))
    finally:
        engine.dispose()
    return Snapshot(arts, files, events, lineage)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def catalog_violations(home: Path, snap: Snapshot) -> list[str]:
    """The invariants that hold at every moment, whatever was killed: files of usable artifacts, event chains,
    lineage (see the module docstring)."""
    from llora_store.lifecycle import INITIAL, TRANSITIONS

    out = []
    for aid, a in snap.artifacts.items():
        label = f"{a['kind']} '{a['name']}' ({aid}, {a['state']})"
        if a["state"] in USABLE:
            directory = home / "artifacts" / aid
            live = [f for f in snap.files.get(aid, []) if not f[3]]
            if not directory.is_dir():
                out.append(f"{label}: usable but its directory is missing")
            for path, sha, size, _ in live:
                p = directory / path
                if not p.is_file():
                    out.append(f"{label}: usable but {path} is missing")
                elif p.stat().st_size != size or _sha256(p) != sha:
                    out.append(f"{label}: usable but {path} differs from its record (partial or changed)")
            if a["content_hash"] is not None:
                h = hashlib.sha256()
                for path, sha, _, _ in sorted(live):
                    if not path.startswith("derived/"):
                        h.update(f"{path}\0{sha}\n".encode())
                if h.hexdigest() != a["content_hash"]:
                    out.append(f"{label}: its file rows do not add up to its content hash (a partial file set)")
        chain = snap.events.get(aid, [])
        if not chain:
            out.append(f"{label}: no event row")
            continue
        first = chain[0]
        if first[0] != "create" or first[1] is not None or first[2] not in INITIAL[a["kind"]]:
            out.append(f"{label}: first event is {first[:3]}, not a create into an initial state")
        for prev, ev in zip(chain, chain[1:]):
            if ev[1] != prev[2] or TRANSITIONS[a["kind"]].get((ev[1], ev[0])) != ev[2]:
                out.append(f"{label}: event {ev[:3]} does not follow {prev[:3]} by the transition table")
        if chain[-1][2] != a["state"]:
            out.append(f"{label}: its last event left it '{chain[-1][2]}' (a state change without its event row)")
    for child, parent, role in snap.lineage:
        if child not in snap.artifacts or parent not in snap.artifacts:
            out.append(f"lineage {parent} -> {child} ({role}) names a missing artifact")
    for table in (snap.files, snap.events):
        for aid in table:
            if aid not in snap.artifacts:
                out.append(f"rows name artifact {aid}, which does not exist")
    return out


def export_violations(out_dir: Path) -> list[str]:
    """An export is complete (manifest, every file with its sha256) or absent; a '.partial' beside it is allowed."""
    found = []
    for d in sorted(p for p in out_dir.iterdir() if not p.name.endswith(".partial")) if out_dir.exists() else []:
        try:
            manifest = json.loads((d / "export.json").read_text())
        except (OSError, ValueError):
            found.append(f"export {d.name} has no readable export.json")
            continue
        for f in manifest["files"]:
            p = d / f["path"]
            if not p.is_file() or _sha256(p) != f["sha256"]:
                found.append(f"export {d.name}: {f['path']} missing or not matching its sha256")
    return found


# -- one trial ------------------------------------------------------------------------------------------------------

@dataclass
class Trial:
    command: str
    index: int
    delay: float | None  # seconds after its start the command was killed (None: it was left to finish)
    killed: bool  # False: the command finished before the kill
    returncode: int | None
    point: str  # where the kill left things: the target's state and the debris doctor found
    seconds: float  # how long the command ran before it ended or was killed
    violations: list[str] = field(default_factory=list)
    # llora.json files naming another state than the catalog's (noted, not a violation: the catalog is the truth)
    stale_sidecars: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"command": self.command, "index": self.index, "delay": self.delay and round(self.delay, 3),
                "seconds": round(self.seconds, 3), "killed": self.killed,
                "returncode": self.returncode, "point": self.point, "violations": self.violations,
                "stale_sidecars": self.stale_sidecars}


def run_killed(home: Path, args: list[str], delay: float | None) -> tuple[bool, int, str, str, float]:
    """Start ``llora ARGS`` in a new session, SIGKILL the session after ``delay`` s unless it ended first
    (``delay`` None: let it finish). Returns (killed, exit code, stdout, stderr, seconds it ran)."""
    start = time.monotonic()
    proc = subprocess.Popen([LLORA, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env_for(home), start_new_session=True)
    try:
        proc.wait(timeout=delay)
        killed = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        killed = True
    stdout, stderr = proc.communicate()
    took = time.monotonic() - start
    try:  # nothing of the session may outlive the kill (a writer still running would race the checks)
        os.killpg(proc.pid, 0)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return killed, proc.returncode, stdout, stderr, took


def trial(template: Template, command: str, index: int, delay: float | None, work: Path) -> Trial:
    """One trial (``delay`` None: the command runs to its end, which measures how long it takes)."""
    home = new_home(template, work / f"{command}-{index}", command)
    out = work / f"{command}-{index}-out"
    before = snapshot(home)
    killed, rc, _, stderr, took = run_killed(home, argv(command, template, out), delay)
    t = Trial(command, index, delay, killed, rc, "", took)
    v = t.violations
    if not killed and rc != 0:
        v.append(f"the command failed on its own (exit {rc}): {stderr[-600:]}")
    for text in ("Traceback", "database is locked"):
        if text in stderr:
            v.append(f"its stderr shows {text!r}")
    snap = snapshot(home)
    v += catalog_violations(home, snap)
    if command == "export":
        v += export_violations(out)
    target = snap.by_name(target_name(command)) if target_name(command) else None
    state = target["state"] if target else None
    if command in LEGAL and state not in LEGAL[command]:
        v.append(f"{command}: target left in '{state}', not one of {sorted(map(str, LEGAL[command]))}")
    if command == "merge":
        ad = snap.by_name("ad")
        # the checkpoint and the adapter's 'merge' are one transaction; the adapter's discard follows it
        if (state, ad["state"]) not in ((None, "trained"), ("ready", "merged"), ("ready", "discarded")):
            v.append(f"merge: merged checkpoint {state}, adapter '{ad['state']}' (the two change together)")
    training = sorted(i for i, a in snap.artifacts.items() if a["state"] == "training")
    staging = sorted(p.name for p in (home / "tmp").iterdir()) if (home / "tmp").exists() else []
    rowless = sorted(p.name for p in (home / "artifacts").iterdir() if p.name not in snap.artifacts)

    doctor = llora_here(home, "doctor", "--json")
    report = json.loads(doctor.stdout)
    checks = sorted({f["check"] for f in report["findings"]})
    if command == "export":  # its target is a directory outside the home: complete, a '.partial' beside it, or none
        names = sorted(p.name for p in out.iterdir()) if out.exists() else []
        state = ("export complete" if any(not n.endswith(".partial") for n in names) else
                 "export .partial left" if names else "no export")
    t.point = f"{'done' if not killed else 'killed'}: " + (state if command == "export" else f"target {state}") + (
        f"; {', '.join(checks)}" if checks else "")
    if doctor.returncode != (1 if report["findings"] else 0):
        v.append(f"doctor exited {doctor.returncode} with {len(report['findings'])} findings")
    if set(checks) - DEBRIS_CHECKS:
        v.append(f"doctor found damage, not debris: {[f for f in report['findings'] if f['check'] not in DEBRIS_CHECKS]}")
    reported = {(f["check"], f["artifact_id"] if f["check"] == "dead_transient" else Path(f["path"] or "").name)
                for f in report["findings"]}
    for aid in training:
        if ("dead_transient", aid) not in reported:
            v.append(f"doctor does not report the killed run {aid} left in 'training'")
    for name in staging:
        if ("orphan_staging", name) not in reported:
            v.append(f"doctor does not report staging directory {name}")
    for name in rowless:
        if ("orphan_dir", name) not in reported:
            v.append(f"doctor does not report artifacts/{name}, which has no row")

    gc = llora_here(home, "db", "gc", "--json")
    if gc.returncode != 0:
        v.append(f"db gc exited {gc.returncode}: {gc.stderr[-600:]}")
    else:
        rep = json.loads(gc.stdout)
        if sorted(rep["dead_runs_failed"]) != training:
            v.append(f"gc failed runs {rep['dead_runs_failed']}, expected {training}")
    after = snapshot(home)
    for aid, a in snap.artifacts.items():
        want = "failed" if aid in training else a["state"]
        b = after.artifacts.get(aid)
        if b is None or b["state"] != want or after.files.get(aid) != snap.files.get(aid):
            v.append(f"gc changed {a['kind']} '{a['name']}' ({aid}): {a['state']} -> {b and b['state']}, want {want}")
        if aid in training and after.events[aid][-1][:3] != ("fail", "training", "failed"):
            v.append(f"gc moved {aid} to failed without its event row")
    if set(after.artifacts) != set(snap.artifacts) or after.lineage != snap.lineage:
        v.append("gc added or removed catalog rows")
    v += catalog_violations(home, after)
    if (home / "tmp").exists() and any((home / "tmp").iterdir()):
        v.append(f"tmp/ not empty after gc: {sorted(p.name for p in (home / 'tmp').iterdir())}")
    final = llora_here(home, "doctor", "--json")
    if final.returncode != 0:
        v.append(f"doctor after gc exited {final.returncode}: {json.loads(final.stdout)['findings']}")
    for aid, a in after.artifacts.items():
        try:
            side = json.loads((home / "artifacts" / aid / "llora.json").read_text())["state"]
        except (OSError, ValueError, KeyError):
            continue
        if side != a["state"]:
            t.stale_sidecars.append(f"{a['kind']} '{a['name']}': llora.json says '{side}', the catalog '{a['state']}'")
    # the artifacts the command did not touch are exactly as they were
    for aid, a in before.artifacts.items():
        if a["name"] in (target_name(command), "ad"):
            continue
        if after.artifacts[aid]["state"] != a["state"] or after.files.get(aid) != before.files.get(aid):
            v.append(f"{a['kind']} '{a['name']}' changed though the command did not target it")
    shutil.rmtree(home, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    return t


def delays(seed: int, command: str, n: int, duration: float) -> list[float]:
    """``n`` kill delays over [0, 1.1 x duration]: one uniform draw in each of n equal strata (every part of the
    command's run is sampled, the end included), in a shuffled order; seeded per command."""
    rng = random.Random(f"{seed}:{command}")
    span = 1.1 * duration
    out = [(i + rng.random()) * span / n for i in range(n)]
    rng.shuffle(out)
    return out


def run_command_trials(template: Template, command: str, n: int, seed: int, work: Path,
                       on_trial=None) -> tuple[float, list[Trial]]:
    """One uninterrupted run (checked like the others: it measures the command's duration here), then ``n``
    trials killed at ``delays``. Returns (duration, [the full run, then the n trials])."""
    first = trial(template, command, 0, None, work)
    if first.killed or first.returncode != 0:
        raise RuntimeError(f"llora {command} does not succeed uninterrupted here: {first.violations}")
    results = [first]
    if on_trial:
        on_trial(first)
    for i, d in enumerate(delays(seed, command, n, first.seconds), start=1):
        t = trial(template, command, i, d, work)
        results.append(t)
        if on_trial:
            on_trial(t)
    return first.seconds, results
