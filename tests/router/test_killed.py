"""R10 for the router commands: `llora router collect` and `llora router fit` killed (SIGKILL, no cleanup runs) leave
nothing usable behind, and collect resumes where it was killed. The killed process is a fresh interpreter running the
real command on the conftest catalog, its engine outcomes replaced as in conftest (each domain's modifier answers its
own domain)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

KILLED = textwrap.dedent('''
    import os, signal, sys
    import llora_cli.engine as engine_pkg
    from llora_cli.router import collect as col

    where, n = sys.argv[1], int(sys.argv[2])
    engine_pkg.open_engine = lambda *a, **k: type("FakeEngine", (), {"refused": {}})()
    seen = []

    def measure(engine, candidates, queries, on_row):
        for q in queries:
            if where == "collect" and len(seen) == n:
                os.kill(os.getpid(), signal.SIGKILL)
            seen.append(q.key)
            on_row(q, {(m.id if m else "none"): {"score": int(m is not None and m.domain == q.task), "tokens": 9,
                                                  "text": "x"} for m in candidates})

    col.measure = measure
    if where == "fit":  # killed once the router's files are written, before the catalog row exists
        from llora_cli.router import model as rmodel
        real_save = rmodel.save

        def save(directory, *a, **k):
            real_save(directory, *a, **k)
            print(sorted(p.name for p in directory.iterdir()), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

        rmodel.save = save
    from llora_cli.cli.main import app
    app(sys.argv[3:])
''')


def killed(llora_home, where: str, n: int, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LLORA_HOME": str(llora_home)}
    return subprocess.run([sys.executable, "-c", KILLED, where, str(n), *args], env=env, capture_output=True, text=True)


COLLECT = ("router", "collect", "b", "--data", "auto", "--data", "reason", "--limit", "10")


def test_collect_killed_leaves_no_scenario_set_and_resumes(cli, store, catalog, fake_engine, llora_home):
    proc = killed(llora_home, "collect", 7, *COLLECT)
    assert proc.returncode == -9, proc.stderr
    assert store.list(kind="scenario-set") == []  # nothing half-written is visible (R10)
    partial = [p for p in store.layout.leftovers() if p.name.startswith("collect-")]
    assert len(partial) == 1 and len((partial[0] / "rows.jsonl").read_text().splitlines()) == 7
    # gc leaves it while its process lives; this one is dead, so a dry run would remove it
    assert store.gc(dry_run=True).staging_removed == [partial[0].name]
    res = cli.json(*COLLECT, "--name", "sc")
    assert res["rows"] == 20 and res["resumed"] == 7
    assert len(fake_engine[-1]) == 13  # only the 13 rows the killed run had not measured
    a, r = (catalog[1][d].id for d in ("automation", "reasoning"))
    assert {c: v["correct"] for c, v in res["figures"]["overall"]["fixed"].items()} == {"none": 5, a: 10, r: 10}
    rows = [json.loads(x) for x in (store.path_of(res["id"]) / "scenarios.jsonl").read_text().splitlines()]
    assert len({(x["dataset"], x["row"]) for x in rows}) == 20  # each query once, none lost or doubled
    assert not [p for p in store.layout.leftovers() if p.name.startswith("collect-")]


def test_fit_killed_after_writing_its_files_leaves_no_router(cli, store, catalog, fake_engine, llora_home):
    cli.json(*COLLECT, "--name", "sc")
    before = set(p.name for p in store.layout.leftovers())
    proc = killed(llora_home, "fit", 0, "router", "fit", "sc", "--name", "r", "steps=20")
    assert proc.returncode == -9, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "['.owner', 'router.json', 'router.safetensors']"
    assert store.list(kind="router") == []  # the files were complete, but no router exists (R10)
    debris = [p for p in store.layout.leftovers() if p.name not in before]
    assert len(debris) == 1 and (debris[0] / "router.safetensors").is_file()
    assert store.gc().staging_removed == [debris[0].name] and not debris[0].exists()
    # the same command then fits and registers it
    assert cli.json("router", "fit", "sc", "--name", "r", "steps=20")["training"]["train"]["accuracy"] is not None
    assert [a.name for a in store.list(kind="router")] == ["r"]
