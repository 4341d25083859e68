"""Several llora processes writing to one catalog at once never fail with 'database is locked'."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_parallel_writers(llora_home, store):
    base = store.create("base", "shared-base")
    script = textwrap.dedent(f"""
        import sys
        from llora_store import open_store
        s = open_store({str(llora_home)!r})
        w = sys.argv[1]
        for i in range(25):
            st = s.new_staging(f"w{{w}}-{{i}}")
            (st / "adapter_model.safetensors").write_bytes(f"{{w}}-{{i}}".encode())
            a = s.create("modifier", f"m-{{w}}-{{i}}", state="training", staging=st,
                         parents=[({base.id!r}, "runs_on")], base_hash="x")
            s.apply(a.id, "finish")
            s.update_metadata(a.id, {{"i": i}})
            s.list()
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(w)], stderr=subprocess.PIPE, text=True)
             for w in range(4)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errs
    assert not any("locked" in e for e in errs)
    mods = store.list(kind="modifier")
    assert len(mods) == 100 and {m.state for m in mods} == {"trained"}
    assert sum(len(store.history(m.id)) for m in mods) == 200


def test_a_second_writer_waits_for_the_first_and_sees_its_change(store):
    """One writer at a time (SQLite: BEGIN IMMEDIATE; PostgreSQL: an advisory lock): two deploys of the same base
    are one deploy and one refusal, never two 'deployed' events."""
    import threading

    from llora_store import InvalidTransition
    from llora_store.lifecycle import transition

    base = store.create("base", "raced-base")
    outcome = []

    def second():
        try:
            outcome.append(store.deploy(base.id).state)
        except InvalidTransition as e:
            outcome.append(e)

    with store.writing() as s:
        transition(s, store.resolve(base.id, session=s), "deploy", command="first")
        t = threading.Thread(target=second)
        t.start()
        t.join(timeout=1.5)
        assert t.is_alive(), "the second writer did not wait for the first one's transaction"
    t.join(timeout=60)
    assert len(outcome) == 1 and isinstance(outcome[0], InvalidTransition)
    assert "state 'deployed'" in str(outcome[0])
    assert [(e.event, e.command) for e in store.history(base.id)] == [("create", ""), ("deploy", "first")]
