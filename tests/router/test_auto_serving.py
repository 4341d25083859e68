"""`--modifier auto` end to end on real tiny models: `llora run` and model `BASE:auto` in `llora serve` (a real server
on a loopback port, the official openai client), the route in `run --json`, the request log and `llora logs list`.

The router is fitted on scenario outcomes set by the test (each domain's modifier answers its own domain), so its
choice is known; the engines, the encoder and the served requests are real.
"""

from __future__ import annotations

import pytest
from router_setup import tiny_base_with_modifiers


@pytest.fixture
def routed(cli, store, tiny_model_dir, tmp_path, monkeypatch):
    """A deployed tiny base, two deployed modifiers (automation, reasoning) and a deployed orpo router."""
    mods = tiny_base_with_modifiers(cli, tiny_model_dir, tmp_path, monkeypatch, n=40, n_test=12, limit=20)
    cli.json("router", "fit", "sc", "--method", "orpo", "--name", "r", "steps=150")
    for ref in ("b", "mod-automation", "mod-reasoning", "r"):
        assert cli(("deploy"), ref).exit_code == 0
    return mods


def test_run_auto_routes_logs_and_shows_the_choice(cli, store, routed):
    from llora_cli.data import load_data
    from llora_cli.tasks import prompt_of

    prompt = prompt_of(load_data(store, "reason").test[0])
    out = cli.json("run", "--modifier", "auto", "--engine", "transformers", "--max-tokens", "3", "--json", prompt)
    assert out["modifier"]["name"] == "mod-reasoning"
    route = out["route"]
    assert route["router"]["name"] == "r" and route["modifier"] == "mod-reasoning" and route["fallback"] is None
    assert 0.5 < route["probability"] <= 1 and route["router_ms"] > 0
    log = cli.json("logs", "list", "--limit", "1")[0]
    assert log["modifier"]["name"] == "mod-reasoning" and log["params"]["route"]["probability"] == route["probability"]
    table = cli("logs", "list", "--limit", "1")
    assert "auto -> mod-reasoning (p=" in table.stdout
    # a plain run keeps its own path, and with the router retired `auto` is refused with the hint, nothing loaded
    cli.json("retire", "r")
    r = cli("run", "--modifier", "auto", "--max-tokens", "2", "hello")
    assert r.exit_code == 2 and "no router is deployed on base 'b'" in r.stderr


def test_serve_model_base_auto_routes_per_request(cli, store, routed, llora_home):
    import openai
    from live_server import live_server

    from llora_cli.data import load_data

    with live_server(llora_home, "--engine", "transformers") as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x")
        assert "b:auto" in [m.id for m in client.models.list().data]
        chosen = {}
        for ds, name in (("auto", "mod-automation"), ("reason", "mod-reasoning")):
            row = load_data(store, ds).test[0]
            messages = [m for m in row["messages"] if m["role"] != "assistant"]
            client.chat.completions.create(model="b:auto", messages=messages, max_tokens=2)
            chosen[name] = cli.json("logs", "list", "--limit", "1")[0]
        for name, log in chosen.items():
            assert log["modifier"]["name"] == name and log["params"]["route"]["modifier"] == name
