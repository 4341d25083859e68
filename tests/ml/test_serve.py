"""`llora serve` tested with the official openai client against a server on a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(cli, store, tiny_model_dir, llora_home):
    import httpx

    cli.json("bases", "add", tiny_model_dir, "--name", "tiny")
    cli.json("data", "make", "automation", "--n", "24", "--name", "auto")
    for name in ("mod", "mod2"):
        cli.json("train", "--base", "tiny", "--data", "auto", "--kind", "modifier", "--domain", "automation",
                 "--name", name, "max_steps=10", "learning_rate=0.01")
    cli.json("deploy", "tiny")
    cli.json("deploy", "mod")
    port = free_port()
    env = {**os.environ, "LLORA_HOME": str(llora_home)}
    proc = subprocess.Popen([sys.executable, "-c", "from llora_cli.cli.entry import main; main()", "serve",
                             "--port", str(port), "--api-key", "secret", "--max-tokens", "64"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    else:
        proc.kill()
        raise AssertionError("server did not come up in 120 s")
    yield url
    proc.terminate()
    proc.wait(timeout=20)


def test_openai_client_models_chat_stream_and_errors(cli, store, server):
    import httpx
    import openai

    client = openai.OpenAI(base_url=f"{server}/v1", api_key="secret", max_retries=0)
    assert sorted(m.id for m in client.models.list()) == ["tiny", "tiny:mod"]
    chat = client.chat.completions.create(model="tiny:mod", messages=[{"role": "user", "content": "Set a timer"}],
                                          max_tokens=12)
    assert chat.object == "chat.completion" and chat.choices[0].message.role == "assistant"
    assert chat.usage.completion_tokens >= 1 and chat.choices[0].finish_reason in ("stop", "length")
    plain = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Set a timer"}],
                                           max_tokens=12)
    assert plain.choices[0].message.content != chat.choices[0].message.content  # switched without a reload
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="tiny:mod", messages=[{"role": "user", "content": "Set a timer"}], max_tokens=12, stream=True)]
    assert "".join(pieces) == chat.choices[0].message.content  # greedy: streamed == whole, neither stripped
    text = client.completions.create(model="tiny", prompt="Hello", max_tokens=5)
    assert text.object == "text_completion" and text.usage.completion_tokens >= 1
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="tiny:nope", messages=[{"role": "user", "content": "x"}])
    assert "not deployed" in str(e.value)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=500)
    assert "over this server's limit" in str(e.value)
    bad = httpx.post(f"{server}/v1/chat/completions", headers={"Authorization": "Bearer secret"},
                     content=b'{"model": "tiny", "messages": "not a list"}')
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    big = httpx.post(f"{server}/v1/chat/completions", headers={"Authorization": "Bearer secret"},
                     content=b"x" * (2 << 20))
    assert big.status_code == 413
    logs = cli.json("logs", "list")
    assert len(logs) == 4 and {r["client"] for r in logs} == {"127.0.0.1"}
    assert {r["modifier"]["name"] if r["modifier"] else None for r in logs} == {"mod", None}
    # deploying another modifier while the server runs: it is served without a restart
    cli.json("deploy", "mod2")
    assert sorted(m.id for m in client.models.list()) == ["tiny", "tiny:mod", "tiny:mod2"]
    cli.json("retire", "mod")
    assert sorted(m.id for m in client.models.list()) == ["tiny", "tiny:mod2"]
    assert client.chat.completions.create(model="tiny:mod2", messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=4).choices[0].message.content is not None


def test_concurrent_requests_share_batches(cli, store, server):
    from concurrent.futures import ThreadPoolExecutor

    import openai

    client = openai.OpenAI(base_url=f"{server}/v1", api_key="secret", max_retries=0)
    cli.json("deploy", "mod2")
    requests = [("tiny" if i % 3 == 0 else "tiny:mod" if i % 3 == 1 else "tiny:mod2", f"Set a timer for {i} minutes")
                for i in range(8)]

    def ask(req):
        model, prompt = req
        return client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                              max_tokens=10).choices[0].message.content

    one_by_one = [ask(r) for r in requests]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(ask, requests))
    assert together == one_by_one  # greedy: batching with other modifiers changes no answer
    logs = cli.json("logs", "list", "--limit", "16")
    assert len(logs) == 16 and all(r["params"]["batch"] == 1 for r in logs[8:])  # oldest 8: one by one
    assert max(r["params"]["batch"] for r in logs[:8]) > 1  # concurrent: shared forward passes
    mixed = {r["modifier"]["name"] if r["modifier"] else None for r in logs[:8] if r["params"]["batch"] > 1}
    assert len(mixed) > 1  # rows on different modifiers (or the base) in one batch


def test_serve_refuses_bad_options_and_no_deployment(cli):
    for args, message in ((["--port", "0"], "--port"), (["--max-batch", "0"], "--max-batch"),
                          (["--max-tokens", "0"], "--max-tokens")):
        r = cli("serve", *args)
        assert r.exit_code == 2 and message in r.stderr and "Traceback" not in r.stderr
    r = cli("serve", "--port", "8123")
    assert r.exit_code == 1 and "no base is deployed" in r.stderr
