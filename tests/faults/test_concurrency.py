"""16 workers, one catalog, a bounded time (tests/faults/concurrency.py): two identical merges, exactly one wins and
the other gets a clear error; no "database is locked" and no traceback anywhere; every successful command left
exactly its event rows; the catalog checks and `llora doctor` hold after. On SQLite, and on PostgreSQL (tests/pg.py's
throwaway server: skipped where it cannot start, failed under CI=true)."""

from __future__ import annotations

import collections
import json
import subprocess

import pytest
from faults import concurrency as cc
from faults import harness

SECONDS = 30  # workers start no command after this; the commands running then finish

pytestmark = pytest.mark.faults


def check_run(home, url, model_dir, adapter_dir) -> dict:
    cc.setup(home, url, model_dir, adapter_dir)
    ops = cc.run(home, url, model_dir, adapter_dir, SECONDS, home.parent)
    s = cc.summary(ops)
    print(json.dumps(s, indent=1))
    assert s["unexpected"] == 0, s["unexpected_ops"]
    assert s["operations"] == s["ok"] + s["refused"] and s["operations"] >= 16
    assert not [o for o in ops if "database is locked" in o.stdout + o.stderr or "Traceback" in o.stdout + o.stderr]

    # each merge race: both ran, exactly one won, the loser was refused with a message naming the adapter
    races = collections.defaultdict(list)
    for o in ops:
        if o.args[0] == "merge":
            races[o.round].append(o)
    assert races and all(len(pair) == 2 for pair in races.values()), {r: len(p) for r, p in races.items()}
    for r, pair in races.items():
        assert sorted(o.returncode for o in pair) == [0, 1], [o.to_json() for o in pair]
        assert cc.refusal(next(o for o in pair if o.returncode == 1)) == "merge: the other one won"

    snap = harness.snapshot(home, url)
    assert harness.catalog_violations(home, snap) == []
    # every successful command left its event rows, and no refused one left any
    tiny = snap.by_name("tiny")
    events = [e[0] for e in snap.events[tiny["id"]]]
    ok = collections.Counter(o.args[0] for o in ops if o.returncode == 0)
    assert events.count("deploy") == ok["deploy"] and events.count("retire") == ok["retire"]
    assert ok["deploy"] >= 1 and len(events) == 1 + ok["deploy"] + ok["retire"]
    merged = [a for a in snap.artifacts.values() if a["kind"] == "merged"]
    assert len(merged) == ok["merge"] == len(races)
    for r in races:  # the adapter of each race was merged once and then discarded
        ad = snap.by_name(f"ad-{r // 100}-{r % 100}")
        assert [e[0] for e in snap.events[ad["id"]]] == ["create", "merge", "discard"]
    datasets = {a["name"]: a["state"] for a in snap.artifacts.values() if a["kind"] == "dataset" and a["name"] != "auto"}
    made = {o.args[o.args.index("--name") + 1] for o in ops if o.args[:2] == ("data", "make") and o.returncode == 0}
    discarded = {o.args[1] for o in ops if o.args[0] == "discard" and o.returncode == 0}
    assert set(datasets) == made and {n for n, st in datasets.items() if st == "discarded"} == discarded
    trained = [o for o in ops if o.args[0] == "train"]
    assert trained and {snap.by_name(o.args[o.args.index("--name") + 1])["state"] for o in trained} == {"trained"}

    env = cc.env_for(home, url)
    doctor = subprocess.run([harness.LLORA, "doctor", "--json"], capture_output=True, text=True, env=env)
    assert doctor.returncode == 0, doctor.stdout
    assert json.loads(doctor.stdout)["ok"] is True
    return s


def test_sixteen_processes_on_sqlite(tiny_model_dir, tiny_adapter_dir, llora_home):
    check_run(llora_home, None, tiny_model_dir, tiny_adapter_dir)


def test_sixteen_processes_on_postgresql(tiny_model_dir, tiny_adapter_dir, llora_home, postgres_url):
    check_run(llora_home, postgres_url, tiny_model_dir, tiny_adapter_dir)
