"""A router test catalog on a real tiny base (shared by tests/router/test_auto_serving.py and test_depth_serving.py)."""

from __future__ import annotations

from llora_cli.router import collect as col


def tiny_base_with_modifiers(cli, tiny_model_dir, tmp_path, monkeypatch, *, n: int, n_test: int, limit: int) -> dict:
    """A real tiny base 'b', two imported modifiers (mod-automation, mod-reasoning), datasets 'auto' and 'reason'
    (``n`` rows, ``n_test`` held out) and a scenario set 'sc' collected on ``limit`` rows per dataset with known
    outcomes (each modifier answers its own domain, the base alone nothing). Returns the modifiers by domain."""
    import tiny

    cli.json("bases", "add", tiny_model_dir, "--name", "b")
    mods = {}
    for seed, domain in enumerate(("automation", "reasoning")):
        d = tiny.build_tiny_adapter(tiny_model_dir, tmp_path / domain, seed=seed)
        mods[domain] = cli.json("modifiers", "import", d, "--base", "b", "--domain", domain, "--name", f"mod-{domain}")
    cli.json("data", "make", "automation", "--n", str(n), "--n-test", str(n_test), "--name", "auto")
    cli.json("data", "make", "reasoning", "--n", str(n), "--n-test", str(n_test), "--name", "reason")
    by_id = {m["id"]: d for d, m in mods.items()}

    def measure(engine, candidates, queries, on_row):
        for q in queries:
            on_row(q, {(m.id if m else "none"): {"score": int(m is not None and by_id[m.id] == q.task),
                                                  "tokens": 9, "text": "x"} for m in candidates})

    with monkeypatch.context() as m:
        m.setattr(col, "measure", measure)
        cli.json("router", "collect", "b", "--data", "auto", "--data", "reason", "--limit", str(limit), "--name", "sc")
    return mods
