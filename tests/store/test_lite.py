"""llora_store.lite: the stdlib-sqlite3 view of the catalog that `llora run`'s light path uses gives the rows the ORM
gives, writes the request-log row the ORM writes, and steps aside for what it cannot do."""

from __future__ import annotations

import sqlite3

import pytest

from llora_store import lite

pytestmark = pytest.mark.sqlite_only  # the light path reads SQLite; with LLORA_DB_URL it steps aside (tested below)


def test_reads_match_the_store(store, llora_home):
    base = store.create("base", "b1")
    mods = []
    for i in range(3):
        st = store.new_staging(f"m{i}")
        (st / "adapter_model.safetensors").write_bytes(b"x%d" % i)
        mods.append(store.create("modifier", f"m{i}", state="training", staging=st, parents=[(base.id, "runs_on")],
                                 base_hash="h", domain="code"))
        store.apply(mods[-1].id, "finish")
    store.update_metadata(mods[1].id, {"k": [1, 2]})
    cat = lite.open_catalog(llora_home)
    try:
        for ref in [base, *mods]:
            full, row = store.get(ref.id), cat.get(ref.id)
            for attr in ("id", "kind", "name", "state", "content_hash", "base_hash", "quantization", "domain", "meta"):
                assert getattr(row, attr) == getattr(full, attr), attr
        assert [r.id for r in cat.list(kind="modifier", state="trained")] == \
               [a.id for a in store.list(kind="modifier", state="trained")]
        with store.reading() as s:
            expected = [a.id for a in store.children_by_role(s, base.id, "runs_on")]
        with cat.reading() as s:
            assert [a.id for a in cat.children_by_role(s, base.id, "runs_on")] == expected == [m.id for m in mods]
        assert cat.path_of(base.id) == store.path_of(base.id)
        with pytest.raises(lite.NeedsCatalog):
            cat.get("nosuchid")
        with pytest.raises(lite.NeedsCatalog):
            cat.new_staging("x")  # a file still to be derived: the full Store's job
    finally:
        cat.close()


def test_request_log_row_equals_the_orms(store, llora_home):
    base = store.create("base", "b1")
    kw = dict(base_id=base.id, modifier_id=None, engine="llamacpp", client="c" * 80, prompt="héllo", response="ok",
              tokens_in=3, tokens_out=2, latency_ms=12.5, ttft_ms=None, params={"max_tokens": 8, "stop": ["a"]})
    orm_id = store.log_request(**kw)
    cat = lite.open_catalog(llora_home)
    try:
        lite_id = cat.log_request(**kw)
    finally:
        cat.close()
    assert lite_id == orm_id + 1
    new, old = store.request_logs(limit=2)
    assert new["id"] == lite_id and old["id"] == orm_id
    for key in ("base", "modifier", "engine", "client", "prompt", "response", "tokens_in", "tokens_out",
                "latency_ms", "ttft_ms", "params"):
        assert new[key] == old[key], key
    assert new["client"] == "c" * 64
    con = sqlite3.connect(llora_home / "catalog.db")  # the stored text of the timestamp has the ORM's format
    (a, b), = [tuple(r[0] for r in con.execute("SELECT at FROM request_log ORDER BY id"))]
    con.close()
    assert len(a) == len(b) == 26 and a[10] == b[10] == " " and new["at"] >= old["at"]


def test_declines_postgres_missing_catalog_and_other_schema(store, llora_home, monkeypatch, tmp_path):
    assert lite.open_catalog(tmp_path / "empty") is None  # no catalog yet: Store creates it
    con = sqlite3.connect(llora_home / "catalog.db")
    con.execute("UPDATE alembic_version SET version_num = '0001'")
    con.commit()
    con.close()
    assert lite.open_catalog(llora_home) is None  # an older schema: Store says to upgrade
    monkeypatch.setenv("LLORA_DB_URL", "postgresql+psycopg://u@localhost/x")
    assert lite.open_catalog(llora_home) is None
