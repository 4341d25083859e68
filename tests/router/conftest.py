"""Router test fixtures: a catalog of a base with two modifiers and two task datasets, and a fake engine whose
outcomes are known (each domain's modifier answers its own domain; the base alone answers nothing)."""

from __future__ import annotations

import pytest

from llora_cli.router import collect as col


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tiny models: two threads on the two shared cores ran them ~20x slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def catalog(cli, store):
    st = store.new_staging("b")
    (st / "model.safetensors").write_bytes(b"weights")
    base = store.create("base", "b", staging=st)
    mods = {}
    for domain in ("automation", "reasoning"):
        st = store.new_staging(domain)
        (st / "adapter_model.safetensors").write_bytes(domain.encode())
        mods[domain] = store.create("modifier", f"mod-{domain}", state="trained", staging=st, domain=domain,
                                    parents=[(base.id, "runs_on")], base_hash=base.content_hash)
    cli.json("data", "make", "automation", "--n", "40", "--n-test", "12", "--name", "auto")
    cli.json("data", "make", "reasoning", "--n", "40", "--n-test", "12", "--name", "reason")
    return base, mods


class FakeEngine:
    refused: dict = {}


@pytest.fixture
def fake_engine(monkeypatch, catalog):
    """``measured`` records the queries each measure() call saw."""
    base, mods = catalog
    measured: list[list[str]] = []
    by_id = {m.id: d for d, m in mods.items()}

    def measure(engine, candidates, queries, on_row):
        measured.append([q.key for q in queries])
        for q in queries:
            outcomes = {}
            for m in candidates:
                name = m.id if m else "none"
                # the right modifier answers; an odd row of reasoning is also answered by the base (fewer tokens)
                right = m is not None and by_id[m.id] == q.task
                base_too = m is None and q.task == "reasoning" and q.row_index % 2 == 1
                outcomes[name] = {"score": int(right or base_too), "tokens": 5 if m is None else 9, "text": "x"}
            on_row(q, outcomes)

    import llora_cli.engine as engine_pkg

    monkeypatch.setattr(col, "measure", measure)
    monkeypatch.setattr(engine_pkg, "open_engine", lambda store, deployment, engine="auto", **k: FakeEngine())
    return measured
