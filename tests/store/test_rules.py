"""Rules R1-R10 as the store enforces them, each with the error it gives."""

from __future__ import annotations

import pytest

from llora_store import InvalidTransition, RuleViolation, rules
from llora_store.errors import Conflict


def staged(store, files: dict[str, bytes]):
    path = store.new_staging("x")
    for name, data in files.items():
        (path / name).write_bytes(data)
    return path


def make_runtime(store):
    """A deployed base with a trained modifier on it (hash-matched, R6)."""
    base = store.create("base", "base", staging=staged(store, {"model.safetensors": b"weights"}))
    mod = store.create("modifier", "code", state="trained", parents=[(base.id, "runs_on")],
                       base_hash=base.content_hash, domain="code",
                       staging=staged(store, {"adapter_model.safetensors": b"lora"}))
    return base, mod


def test_r5_training_adapter_is_never_deployed(store):
    base = store.create("base", "b", staging=staged(store, {"w": b"1"}))
    ad = store.create("adapter", "ad", state="trained", parents=[(base.id, "trained_on")], base_hash=base.content_hash)
    with pytest.raises(RuleViolation) as exc:
        store.deploy(ad.id)
    assert exc.value.rule == "R5" and "merge it" in exc.value.hint
    assert store.get(ad.id).state == "trained"
    with pytest.raises(RuleViolation, match="R5"):
        rules.check_runnable(store.get(ad.id))


def test_r6_modifier_deploys_only_on_its_deployed_base(store):
    base, mod = make_runtime(store)
    with pytest.raises(RuleViolation, match="R6.*'ready'"):
        store.deploy(mod.id)
    store.deploy(base.id)
    assert store.deploy(mod.id).state == "deployed"
    other = store.create("base", "other", staging=staged(store, {"model.safetensors": b"other weights"}))
    with pytest.raises(RuleViolation, match="R6"):
        rules.check_modifier_base(store.get(mod.id), other)


def test_r6_modifier_with_wrong_base_hash_is_refused(store):
    base = store.create("base", "b", staging=staged(store, {"w": b"1"}))
    store.deploy(base.id)
    mod = store.create("modifier", "m", state="trained", parents=[(base.id, "runs_on")], base_hash="0" * 64)
    with pytest.raises(RuleViolation, match="R6"):
        store.deploy(mod.id)
    assert store.get(mod.id).state == "trained"


def test_r7_deployed_artifact_is_immutable(store):
    base, _ = make_runtime(store)
    store.deploy(base.id)
    with pytest.raises(RuleViolation, match="R7"):
        store.update_metadata(base.id, {"note": "x"})
    with pytest.raises(InvalidTransition, match="retire"):
        store.discard(base.id)
    store.retire(base.id)
    assert store.update_metadata(base.id, {"note": "x"}).meta["note"] == "x"


def test_r7_cannot_discard_or_retire_what_a_deployed_modifier_needs(store):
    base, mod = make_runtime(store)
    store.deploy(base.id)
    store.deploy(mod.id)
    with pytest.raises(RuleViolation, match="R7.*code") as exc:
        store.retire(base.id)
    assert f"llora retire {mod.id}" in exc.value.hint
    store.retire(mod.id)
    store.retire(base.id)
    # the retired modifier no longer protects the base from discard
    assert store.discard(base.id).state == "discarded"


def test_r7_discard_is_refused_through_a_chain_of_dependencies(store):
    base, mod = make_runtime(store)
    store.deploy(base.id)
    store.deploy(mod.id)
    store.retire(mod.id)
    store.retire(base.id)
    router = store.create("router", "r", state="trained", parents=[(base.id, "runs_on"), (mod.id, "routes_to")])
    store.deploy(base.id)
    store.deploy(mod.id)
    store.deploy(router.id)
    store.retire(router.id)
    store.retire(mod.id)
    # router is retired, modifier retired: a retired base can be discarded now
    store.retire(base.id)
    assert store.discard(mod.id).state == "discarded"


def test_r8_router_needs_every_modifier_deployed_on_its_base(store):
    base, mod = make_runtime(store)
    mod2 = store.create("modifier", "math", state="trained", parents=[(base.id, "runs_on")], base_hash=base.content_hash)
    router = store.create("router", "router", state="trained",
                          parents=[(base.id, "runs_on"), (mod.id, "routes_to"), (mod2.id, "routes_to")])
    with pytest.raises(RuleViolation, match="R8.*base that is not deployed"):
        store.deploy(router.id)
    store.deploy(base.id)
    store.deploy(mod.id)
    with pytest.raises(RuleViolation, match="R8.*math") as exc:
        store.deploy(router.id)
    assert exc.value.hint == f"deploy it first: llora deploy {mod2.id}"
    store.deploy(mod2.id)
    assert store.deploy(router.id).state == "deployed"
    with pytest.raises(RuleViolation, match="R7"):
        store.retire(mod2.id)  # the deployed router routes to it


def test_r8_router_refuses_modifier_of_another_base(store):
    base, mod = make_runtime(store)
    other = store.create("base", "other", staging=staged(store, {"w": b"other"}))
    foreign = store.create("modifier", "foreign", state="trained", parents=[(other.id, "runs_on")],
                           base_hash=other.content_hash)
    for a in (base, other, mod, foreign):
        store.deploy(a.id)
    router = store.create("router", "rt", state="trained",
                          parents=[(base.id, "runs_on"), (mod.id, "routes_to"), (foreign.id, "routes_to")])
    with pytest.raises(RuleViolation, match="R8.*another base"):
        store.deploy(router.id)


def test_r9_discard_deletes_files_keeps_row_lineage_history(store):
    base = store.create("base", "b", staging=staged(store, {"model.safetensors": b"w" * 100, "config.json": b"{}"}))
    ad = store.create("adapter", "ad", state="trained", parents=[(base.id, "trained_on")], base_hash=base.content_hash,
                      staging=staged(store, {"adapter_model.safetensors": b"lora"}))
    directory = store.layout.artifact_dir(ad.id)
    assert (directory / "adapter_model.safetensors").exists()
    store.discard(ad.id, reason="done")
    assert not (directory / "adapter_model.safetensors").exists()
    assert (directory / "llora.json").exists()  # the sidecar stays, updated
    d = store.describe(ad.id)
    assert d.summary.state == "discarded"
    assert d.summary.parents == [{"id": base.id, "role": "trained_on"}]
    assert [f.deleted for f in d.files] == [True]
    assert [e.event for e in store.history(ad.id)] == ["create", "discard"]
    assert store.history(ad.id)[-1].reason == "done"
    assert store.verify(ad.id).ok
    import json

    assert json.loads((directory / "llora.json").read_text())["state"] == "discarded"


def test_r10_failed_create_leaves_nothing_visible(store, monkeypatch):
    staging = staged(store, {"model.safetensors": b"w"})

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(store.layout, "publish", boom)
    with pytest.raises(OSError):
        store.create("base", "b", staging=staging)
    assert store.list() == []
    assert not staging.exists()
    assert list(store.layout.artifacts.iterdir()) == []


def test_r10_commit_failure_after_publish_removes_the_directory(store, monkeypatch):
    from sqlalchemy.orm.session import SessionTransaction

    staging = staged(store, {"model.safetensors": b"w"})
    real_commit = SessionTransaction.commit

    def failing_commit(self, *a, **k):
        raise OSError("database went away")

    monkeypatch.setattr(SessionTransaction, "commit", failing_commit)
    with pytest.raises(OSError):
        store.create("base", "b", staging=staging)
    monkeypatch.setattr(SessionTransaction, "commit", real_commit)
    assert store.list() == []
    assert list(store.layout.artifacts.iterdir()) == []


def test_r10_killed_process_leaves_debris_only_in_tmp(store, llora_home):
    """A writer killed mid-copy: no artifact row, no artifact dir; gc removes the debris."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import os, signal
        from llora_store import open_store
        s = open_store({str(llora_home)!r})
        st = s.new_staging("killed")
        (st / "model.safetensors").write_bytes(b"half")
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script])
    assert proc.returncode == -9
    assert store.list() == []
    assert len(store.layout.leftovers()) == 1
    report = store.gc()
    assert len(report.staging_removed) == 1 and store.layout.leftovers() == []


def test_gc_keeps_staging_of_a_live_process(store):
    st = store.new_staging("live")
    report = store.gc()
    assert report.staging_in_use == [st.name] and st.exists()


def test_gc_removes_orphan_directories(store):
    orphan = store.layout.artifact_dir("deadbeef0000")
    orphan.mkdir(parents=True)
    (orphan / "model.safetensors").write_bytes(b"x")
    assert store.gc(dry_run=True).orphans_removed == ["deadbeef0000"] and orphan.exists()
    store.gc()
    assert not orphan.exists()


def test_same_content_is_stored_once_when_asked(store):
    store.create("base", "a", staging=staged(store, {"w": b"same"}), unique_content=True)
    with pytest.raises(Conflict, match="already registered as base 'a'"):
        store.create("base", "b", staging=staged(store, {"w": b"same"}), unique_content=True)
    assert [a.name for a in store.list()] == ["a"]
    assert store.layout.leftovers() == []


def test_merge_hooks_r1_to_r4(store):
    base = store.create("base", "b", staging=staged(store, {"w": b"1"}))
    look_alike = store.create("base", "b2", staging=staged(store, {"w": b"2"}))
    ad = store.create("adapter", "ad", state="trained", parents=[(base.id, "trained_on")], base_hash=base.content_hash)
    mod = store.create("modifier", "m", state="trained", parents=[(base.id, "runs_on")], base_hash=base.content_hash)
    rules.check_mergeable(store.get(ad.id), store.get(base.id))  # allowed
    with pytest.raises(RuleViolation, match="R1"):
        rules.check_mergeable(store.get(mod.id), store.get(base.id))
    with pytest.raises(RuleViolation, match="R3"):
        rules.check_mergeable(store.get(ad.id), store.get(look_alike.id))
    training = store.create("adapter", "tr", state="training", base_hash=base.content_hash)
    with pytest.raises(RuleViolation, match="R2.*'training'"):
        rules.check_mergeable(store.get(training.id), store.get(base.id))
    q = store.create("adapter", "q", state="trained", base_hash=base.content_hash, quantization="nf4")
    rules.check_mergeable(store.get(q.id), store.get(base.id))  # the round-trip merge is allowed
    with pytest.raises(RuleViolation, match="R4"):
        rules.check_mergeable(store.get(q.id), store.get(base.id), naive_qlora=True)


def test_the_store_refuses_a_merge_record_breaking_r1_to_r4(store):
    """``Store.create`` of a merged artifact with the adapter's merge transition checks R1-R4 itself: a caller that
    skips ``check_mergeable`` or merges a QLoRA adapter naively without its measured error changes nothing."""
    base = store.create("base", "b", staging=staged(store, {"w": b"1"}))
    other = store.create("base", "b2", staging=staged(store, {"w": b"2"}))
    q = store.create("adapter", "q", state="trained", parents=[(base.id, "trained_on")], base_hash=base.content_hash,
                     quantization="nf4")
    mod = store.create("modifier", "m", state="trained", parents=[(base.id, "runs_on")], base_hash=base.content_hash)

    def merged(ad, into, meta, name="mg"):
        return store.create("merged", name, staging=staged(store, {"w": b"3"}), metadata=meta,
                            parents=[(into.id, "merge_base"), (ad.id, "adapter")], transitions=[(ad.id, "merge")])

    cases = [(mod, base, {}, "R1"), (q, other, {"merge": {"qlora_merge": "round-trip"}}, "R3"),
             (q, base, {"merge": {"qlora_merge": None}}, "R4.*no quantization round trip"),
             (q, base, {}, "R4"), (q, base, {"merge": {"qlora_merge": "naive"}}, "R4.*records none"),
             (q, base, {"merge": {"qlora_merge": "naive"}, "verification": {"naive_qlora_error": None}}, "R4")]
    for ad, into, meta, rule in cases:
        with pytest.raises(RuleViolation, match=rule):
            merged(ad, into, meta)
        assert store.get(q.id).state == "trained" and store.get(mod.id).state == "trained"
        assert [a.name for a in store.list() if a.kind == "merged"] == []
    assert not list(store.layout.tmp.iterdir())  # each refused create removed its staging directory
    naive = {"merge": {"qlora_merge": "naive"}, "verification": {"naive_qlora_error": {"max_rel_error": 0.02}}}
    assert merged(q, base, naive).state == "ready" and store.get(q.id).state == "merged"


def test_gc_fails_runs_whose_process_died(store):
    import socket
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    run = store.create("adapter", "killed-run", state="training",
                       metadata={"run": {"host": socket.gethostname(), "pid": pid}})
    live = store.create("adapter", "live-run", state="training",
                        metadata={"run": {"host": socket.gethostname(), "pid": __import__("os").getpid()}})
    assert store.gc(dry_run=True).dead_runs_failed == [run.id] and store.get(run.id).state == "training"
    store.gc()
    assert store.get(run.id).state == "failed" and store.get(live.id).state == "training"
    assert "is gone" in store.history(run.id)[-1].reason


def test_values_postgresql_refuses_are_bad_input_and_nan_metadata_is_kept(store, catalog_db):
    """PostgreSQL enforces column sizes and standard JSON, SQLite does not: a too-long domain is refused there with
    a clear error (nothing written) and stored here; a NaN in metadata is null there and NaN here."""
    import math

    from llora_store import BadInput

    long_domain = "d" * 65
    if catalog_db == "postgresql":
        with pytest.raises(BadInput, match="refused a value: value too long"):
            store.create("modifier", "too-long", state="training", domain=long_domain)
        assert store.list() == []
    else:
        assert store.create("modifier", "too-long", state="training", domain=long_domain).domain == long_domain
    base = store.create("base", "nan-base", metadata={"loss": float("nan"), "curve": [1.5, float("inf")]})
    meta = store.get(base.id).meta
    if catalog_db == "postgresql":
        assert meta == {"loss": None, "curve": [1.5, None]}
    else:
        assert math.isnan(meta["loss"]) and meta["curve"] == [1.5, math.inf]
