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
