"""`llora serve` request fields (issue 11, items 6-11) on the transformers engine: stop strings, n choices,
stream usage, text content parts, log-probabilities, unsupported fields refused by name, streamed text equal
to the whole reply, engine errors ending a stream. The official openai client where it has the parameter, else
plain HTTP. One server per module, on a tiny deployed base."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest

from tests.ml.test_serve import free_port

USER = [{"role": "user", "content": "Set a timer"}]


@contextmanager
def running_server(home, *args: str):
    """`llora serve` on a free loopback port with LLORA_HOME=home; yields its URL."""
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", "from llora_cli.cli.entry import main; main()", "serve",
                             "--port", str(port), *args], env={**os.environ, "LLORA_HOME": str(home)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            assert time.time() < deadline, "server did not come up in 120 s"
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def events(url: str, body: dict) -> list:
    """A streamed request's server-sent events, parsed (``"[DONE]"`` kept as the string)."""
    import httpx

    out = []
    with httpx.stream("POST", url, json={**body, "stream": True}, timeout=60) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: "):
                out.append(line[6:] if line == "data: [DONE]" else json.loads(line[6:]))
    return out


def post(url: str, body: dict):
    import httpx

    return httpx.post(url, json=body, timeout=60)


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    from tests.conftest import Cli

    home = tmp_path_factory.mktemp("serve-fields") / "llora-home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLORA_HOME", str(home))
        Cli().json("bases", "add", str(tiny_model_dir), "--name", "tiny")
        Cli().json("deploy", "tiny")
    with running_server(home, "--max-tokens", "64") as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    import openai

    return openai.OpenAI(base_url=f"{server}/v1", api_key="none", max_retries=0)


def chat(client, **kw):
    return client.chat.completions.create(model="tiny", messages=kw.pop("messages", USER), **kw)


def test_stop_strings_end_the_reply_before_the_first_one(client, server):
    full = chat(client, max_tokens=40).choices[0].message.content
    assert len(full) >= 16, full  # long enough to pick stop strings from its middle
    first, later = full[8:10], full[12:15]
    expected = full[:min(full.find(first), full.find(later))]
    stopped = chat(client, max_tokens=40, stop=[later, first])
    assert stopped.choices[0].message.content == expected and stopped.choices[0].finish_reason == "stop"
    assert stopped.usage.completion_tokens < 40
    chunks = list(chat(client, max_tokens=40, stop=[later, first], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected  # no part of a stop string sent
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["stop"]
    # a single string, on /v1/completions too (streamed and whole)
    raw = client.completions.create(model="tiny", prompt="Hello", max_tokens=30).choices[0].text
    assert len(raw) >= 8, raw
    cut = raw[:raw.find(raw[5:7])]
    whole = client.completions.create(model="tiny", prompt="Hello", max_tokens=30, stop=raw[5:7]).choices[0]
    assert (whole.text, whole.finish_reason) == (cut, "stop")
    pieces = client.completions.create(model="tiny", prompt="Hello", max_tokens=30, stop=raw[5:7], stream=True)
    assert "".join(c.choices[0].text for c in pieces) == cut
    # without a stop string the reply ran to max_tokens: "length"
    assert chat(client, max_tokens=3).choices[0].finish_reason == "length"
    for bad, message in ((["a", "b", "c", "d", "e"], "up to 4"), ([""], "non-empty")):
        r = post(f"{server}/v1/chat/completions", {"model": "tiny", "messages": USER, "stop": bad})
        assert r.status_code == 400 and message in r.json()["error"]["message"]


def test_n_choices_each_with_its_own_seed(client, server):
    two = chat(client, n=2, temperature=1.0, seed=7, max_tokens=16)
    texts = [c.message.content for c in two.choices]
    assert [c.index for c in two.choices] == [0, 1]
    assert texts == [chat(client, temperature=1.0, seed=s, max_tokens=16).choices[0].message.content for s in (7, 8)]
    assert texts[0] != texts[1]
    assert two.usage.completion_tokens == sum(
        chat(client, temperature=1.0, seed=s, max_tokens=16).usage.completion_tokens for s in (7, 8))
    streamed = ["", ""]
    finishes = {}
    for c in chat(client, n=2, temperature=1.0, seed=7, max_tokens=16, stream=True):
        for choice in c.choices:
            streamed[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert streamed == texts and finishes == {0: two.choices[0].finish_reason, 1: two.choices[1].finish_reason}
    greedy = chat(client, n=3, max_tokens=10)  # temperature 0: n identical choices (documented)
    assert len(greedy.choices) == 3 and len({c.message.content for c in greedy.choices}) == 1
    unseeded = chat(client, n=2, temperature=1.0, max_tokens=16)  # one batch, two rows
    assert len(unseeded.choices) == 2
    import openai

    with pytest.raises(openai.BadRequestError) as e:
        chat(client, n=9, max_tokens=4)
    assert "n = 9" in str(e.value) and e.value.body["param"] == "n"


def test_stream_usage_only_when_asked(client, server):
    whole = chat(client, max_tokens=12)
    body = {"model": "tiny", "messages": USER, "max_tokens": 12}
    with_usage = events(f"{server}/v1/chat/completions", {**body, "stream_options": {"include_usage": True}})
    assert with_usage[-1] == "[DONE]"
    last = with_usage[-2]
    assert last["choices"] == [] and last["usage"] == whole.usage.model_dump(exclude_none=True)
    assert all(e["usage"] is None for e in with_usage[:-2])
    without = events(f"{server}/v1/chat/completions", body)
    assert all("usage" not in e for e in without[:-1]) and without[-2]["choices"][0]["finish_reason"]
    no_usage = events(f"{server}/v1/chat/completions", {**body, "stream_options": {"include_usage": False}})
    assert all("usage" not in e for e in no_usage[:-1])
    text = events(f"{server}/v1/completions", {"model": "tiny", "prompt": "Hello", "max_tokens": 5,
                                                "stream_options": {"include_usage": True}})
    assert text[-2]["choices"] == [] and text[-2]["usage"]["completion_tokens"] == 5
    chunks = list(chat(client, max_tokens=12, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    r = post(f"{server}/v1/chat/completions", {**body, "stream_options": {"include_usage": True}})
    assert r.status_code == 400 and "stream: true" in r.json()["error"]["message"]


def test_text_content_parts_and_refused_part_types(client, server):
    plain = chat(client, max_tokens=10).choices[0].message.content
    parts = chat(client, max_tokens=10, messages=[{"role": "user", "content": [
        {"type": "text", "text": "Set a "}, {"type": "text", "text": "timer"}]}])
    assert parts.choices[0].message.content == plain  # parts joined with no separator
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}, *USER]
    assert chat(client, max_tokens=4, messages=history).choices[0].message.content is not None
    for part, kind in (({"type": "image_url", "image_url": {"url": "http://x/y.png"}}, "image_url"),
                       ({"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}, "input_audio")):
        r = post(f"{server}/v1/chat/completions", {"model": "tiny", "max_tokens": 4, "messages": [
            {"role": "user", "content": [{"type": "text", "text": "what is this?"}, part]}]})
        err = r.json()["error"]
        assert r.status_code == 400 and f'"{kind}"' in err["message"] and "text parts only" in err["message"]
        assert err["param"] == "messages[0].content[1].type"
    r = post(f"{server}/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": None}]})
    assert r.status_code == 400 and "messages[0].content is null" in r.json()["error"]["message"]


def _reference_greedy(model_dir, messages, steps: int):
    """Greedy decoding of the tiny model in this process: per step the chosen id and the log-softmax."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    ids = list(tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"])
    out = []
    with torch.inference_mode():
        for _ in range(steps):
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), -1)
            token = int(lp.argmax())
            out.append((token, lp))
            ids.append(token)
    return tok, out


def test_logprobs_are_the_models_own(client, server, tiny_model_dir):
    reply = chat(client, max_tokens=8, logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens == 8 and reply.choices[0].finish_reason == "length"
    tok, ref = _reference_greedy(tiny_model_dir, USER, 8)
    for entry, (token, lp) in zip(content, ref):
        assert entry.token == tok.decode([token]) and entry.logprob == pytest.approx(float(lp[token]), abs=1e-4)
        top = lp.topk(3)
        assert [t.token for t in entry.top_logprobs] == [tok.decode([int(i)]) for i in top.indices]
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(top.values.tolist(), abs=1e-4)
        assert entry.top_logprobs[0].logprob == entry.logprob  # greedy: the chosen token is the most likely
    text = bytes(b for e in content for b in e.bytes).decode("utf-8", errors="replace")
    assert text == reply.choices[0].message.content
    # sampling: still the model's own distribution (before temperature and top-p), as OpenAI reports it
    hot = chat(client, max_tokens=1, logprobs=True, top_logprobs=3, temperature=2.0, top_p=0.5, seed=1)
    assert [t.logprob for t in hot.choices[0].logprobs.content[0].top_logprobs] == pytest.approx(
        [t.logprob for t in content[0].top_logprobs], abs=1e-5)
    # streamed: the same entries, spread over the chunks
    streamed = [e for c in chat(client, max_tokens=8, logprobs=True, top_logprobs=3, stream=True)
                if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in content]
    no_top = chat(client, max_tokens=3, logprobs=True).choices[0].logprobs.content
    assert len(no_top) == 3 and all(e.top_logprobs == [] for e in no_top)
    assert chat(client, max_tokens=3).choices[0].logprobs is None
    for body, message in (({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
                          ({"top_logprobs": 2}, "needs logprobs: true")):
        r = post(f"{server}/v1/chat/completions", {"model": "tiny", "messages": USER, **body})
        assert r.status_code == 400 and message in r.json()["error"]["message"]
    r = post(f"{server}/v1/completions", {"model": "tiny", "prompt": "Hello", "logprobs": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs" and "legacy" in r.json()["error"]["message"]


def test_unsupported_fields_are_refused_by_name_and_noops_accepted(client, server):
    plain = chat(client, max_tokens=6).choices[0].message.content
    base = {"model": "tiny", "messages": USER, "max_tokens": 6}
    refused = {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
               "response_format": {"type": "json_object"}, "presence_penalty": 0.5, "frequency_penalty": 1.0,
               "logit_bias": {"5": 10}, "top_k": 5, "repetition_penalty": 1.1, "tool_choice": "required",
               "reasoning_effort": "low", "audio": {"voice": "alloy", "format": "wav"}}
    for field, value in refused.items():
        r = post(f"{server}/v1/chat/completions", {**base, field: value})
        err = r.json()["error"]
        assert r.status_code == 400 and f"unsupported field '{field}'" in err["message"], (field, err)
        assert err["param"] == field and err["type"] == "invalid_request_error"
    r = post(f"{server}/v1/chat/completions", {**base, "messages": [{"role": "user", "content": "hi", "name": "bob"}]})
    assert r.status_code == 400 and "unsupported field 'messages[0].name'" in r.json()["error"]["message"]
    for field, value in (("echo", True), ("best_of", 3), ("suffix", "x"), ("top_k", 2)):
        r = post(f"{server}/v1/completions", {"model": "tiny", "prompt": "Hello", "max_tokens": 2, field: value})
        assert r.status_code == 400 and f"unsupported field '{field}'" in r.json()["error"]["message"], field
    noops = {"user": "u1", "metadata": {"k": "v"}, "store": False, "n": 1, "presence_penalty": 0,
             "frequency_penalty": 0.0, "logit_bias": {}, "tools": [], "tool_choice": "none",
             "parallel_tool_calls": True, "response_format": {"type": "text"}, "service_tier": "auto",
             "temperature": None, "top_p": None}
    r = post(f"{server}/v1/chat/completions", {**base, **noops})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == plain
    with_options = events(f"{server}/v1/chat/completions", {**base, "stream_options": {}})
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in with_options[:-1] if e["choices"]) == plain
    # the openai client's own parameters go through the same policy
    import openai

    with pytest.raises(openai.BadRequestError, match="unsupported field 'presence_penalty'"):
        chat(client, max_tokens=4, presence_penalty=1.0)


def test_streamed_and_whole_replies_are_the_same_text(client, server):
    prompts = ["Set a timer", "hi", "What is 12 plus 30?", "Write a function that adds two numbers."]
    for p in prompts:
        messages = [{"role": "user", "content": p}]
        whole = chat(client, messages=messages, max_tokens=24).choices[0].message.content
        streamed = "".join(c.choices[0].delta.content or "" for c in chat(client, messages=messages, max_tokens=24,
                                                                          stream=True))
        assert streamed == whole  # exactly: neither is stripped
        text = client.completions.create(model="tiny", prompt=p, max_tokens=24).choices[0].text
        assert "".join(c.choices[0].text for c in client.completions.create(
            model="tiny", prompt=p, max_tokens=24, stream=True)) == text


def test_an_engine_error_ends_the_stream_with_an_error_event(cli, store, tiny_model_dir):
    from fastapi.testclient import TestClient

    from llora_cli.server import Served, create_app

    cli.json("bases", "add", tiny_model_dir, "--name", "tiny")
    cli.json("deploy", "tiny")
    served = Served(store)
    runner = served.runtime.runner
    real_run = runner.run

    def failing(jobs):  # the first piece goes out (when streamed), then the engine fails
        if jobs[0].on_piece is not None:
            jobs[0].on_piece("partial ", [])
        raise RuntimeError("the engine broke")

    runner.run = failing
    app = TestClient(create_app(served), raise_server_exceptions=False)
    body = {"model": "tiny", "messages": USER, "max_tokens": 4}
    with app.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert r.status_code == 200
    assert json.loads(lines[1][6:])["choices"][0]["delta"] == {"content": "partial "}
    assert json.loads(lines[-2][6:])["error"] == {"message": "the engine broke", "type": "server_error"}
    assert lines[-1] == "data: [DONE]"
    r = app.post("/v1/chat/completions", json=body)
    assert r.status_code == 500 and r.json()["error"] == {"message": "RuntimeError: the engine broke",
                                                          "type": "server_error", "param": None, "code": None}
    runner.run = real_run
    assert app.post("/v1/chat/completions", json=body).json()["choices"][0]["finish_reason"] in ("stop", "length")
