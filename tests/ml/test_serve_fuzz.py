"""`llora serve` fuzzed over real HTTP: schemathesis draws requests from the server's own OpenAPI schema
(/openapi.json), valid and invalid by the schema, plus hand-written malformed bodies.

Never a 500, never a traceback or an HTML error page, every 4xx an OpenAI-shaped JSON error with a message, and
no state change from a refused request (artifact states and their event rows are compared before and after).
Counts: docs/reliability.md. ``LLORA_FUZZ_EXAMPLES=N`` runs N cases per operation.
"""

from __future__ import annotations

import json
import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from live_server import live_server

EXAMPLES = int(os.environ.get("LLORA_FUZZ_EXAMPLES", "0")) or None
SEEN: dict[int, int] = {}


def catalog_state(home) -> list[tuple]:
    from llora_store import open_store

    store = open_store(home)
    try:
        return sorted((a.id, a.state, len(store.history(a.id))) for a in store.artifacts())
    finally:
        store.engine.dispose()


@pytest.fixture(scope="module")
def fuzz_server(tiny_model_dir, tiny_adapter_dir, tmp_path_factory):
    from conftest import Cli

    home = tmp_path_factory.mktemp("fuzz-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLORA_HOME", str(home))
        mp.delenv("LLORA_DB_URL", raising=False)
        cli = Cli()
        cli.json("bases", "add", tiny_model_dir, "--name", "tiny")
        cli.json("deploy", "tiny")
        cli.json("modifiers", "import", tiny_adapter_dir, "--base", "tiny", "--domain", "code", "--name", "mod")
        cli.json("deploy", "mod")
        before = catalog_state(home)
        with live_server(home, "--max-tokens", "8", "--engine", "transformers") as url:
            yield url
        assert catalog_state(home) == before, "fuzzed requests changed the catalog"
        print(f"\nfuzzed requests by status: {dict(sorted(SEEN.items()))}")


@pytest.fixture(scope="module")
def operations(fuzz_server):
    """The server's operations from its OpenAPI schema (schemathesis), by label ("POST /v1/chat/completions")."""
    loaded = schemathesis.openapi.from_url(f"{fuzz_server}/openapi.json")
    return {op.label: op for op in (r.ok() for r in loaded.get_all_operations())}


def assert_answered(status: int, headers, text: str) -> None:
    SEEN[status] = SEEN.get(status, 0) + 1
    assert status < 500, f"{status}: {text[:1000]}"
    assert "Traceback" not in text and "<html" not in text.lower(), text[:1000]
    if status >= 400:
        kind = headers.get("content-type") or ""
        kind = kind[0] if isinstance(kind, list) else kind  # schemathesis' responses hold lists of values
        assert kind.startswith("application/json"), (status, headers, text[:300])
        error = json.loads(text)["error"]
        assert isinstance(error["message"], str) and error["message"], text[:300]


OPERATIONS = ["POST /v1/chat/completions", "POST /v1/completions", "GET /v1/models", "GET /health"]


# negative cases need something to break: the GET routes take no parameters
CASES = [(op, "positive") for op in OPERATIONS] + [(op, "negative") for op in OPERATIONS if op.startswith("POST")]


@pytest.mark.parametrize("label,mode", CASES)
def test_schema_drawn_requests_never_fail_the_server(operations, fuzz_server, label, mode):
    """Requests schemathesis draws from the schema: valid ones (positive) and ones breaking it (negative)."""
    from schemathesis import GenerationMode

    assert set(OPERATIONS) <= set(operations), sorted(operations)  # the schema lists every route
    strategy = operations[label].as_strategy(generation_mode=GenerationMode(mode))

    @settings(max_examples=EXAMPLES or 25, deadline=None, derandomize=EXAMPLES is None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy, model=st.sampled_from([None, "tiny", "tiny:mod"]))
    def run(case, model):
        if model is not None and isinstance(case.body, dict):  # reach generation, not only the model lookup
            case.body["model"] = model
        response = case.call(base_url=fuzz_server, timeout=120)
        assert_answered(response.status_code, response.headers, response.text)

    run()


MALFORMED = [
    b"", b"{", b"null", b"[]", b"42", b'"text"', b"\xff\xfe\x00", b'{"model": "tiny"}',
    b'{"model": "tiny", "messages": []}', b'{"model": "tiny", "messages": "hi"}',
    b'{"model": "tiny", "messages": [{"role": "user"}]}', b'{"model": "tiny", "messages": [{"content": "x"}]}',
    b'{"model": "tiny", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}',
    b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}',
    b'{"model": "tiny:nope", "messages": [{"role": "user", "content": "x"}]}',
    b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 100000}',
    b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}',
    b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}',
    b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "n": 1e308}',
    b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "stop": ["", ""]}',
    b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "depth": 99}',
    b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}',
    b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": true}}',
    b'{"model": "tiny", "prompt": ""}', b'{"model": "tiny", "prompt": ["a", "b"]}',
    b'{"model": "tiny", "prompt": "x", "logprobs": 3}',
    b'{"model": "tiny", "messages": [{"role": "user", "content": "' + b"a" * 40000 + b'"}]}',
]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_malformed_bodies_get_a_4xx_with_a_message(fuzz_server, path):
    import httpx

    for body in MALFORMED:
        r = httpx.post(f"{fuzz_server}{path}", content=body, headers={"content-type": "application/json"},
                       timeout=120)
        assert_answered(r.status_code, r.headers, r.text)
        assert 400 <= r.status_code < 500, (body[:80], r.status_code, r.text[:300])


def test_a_huge_body_is_refused_before_it_is_read(fuzz_server):
    import httpx

    r = httpx.post(f"{fuzz_server}/v1/chat/completions", content=b"x" * (2 << 20),
                   headers={"content-type": "application/json"}, timeout=120)
    assert r.status_code == 413 and "over 1048576 bytes" in r.json()["error"]["message"]
    # a chunked body has no content-length for the guard to read: it is refused as malformed JSON, not a 500
    r = httpx.post(f"{fuzz_server}/v1/chat/completions", content=iter([b"{", b"x" * 1000]),
                   headers={"content-type": "application/json"}, timeout=120)
    assert_answered(r.status_code, r.headers, r.text)
    assert r.status_code == 400


def test_a_slow_client_does_not_block_others(fuzz_server):
    """A client that sends half a request and stalls must not stop the server answering another client."""
    import socket
    import time

    import httpx

    host, port = fuzz_server.removeprefix("http://").split(":")
    slow = socket.create_connection((host, int(port)))
    try:
        slow.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"model\": ")
        start = time.perf_counter()
        r = httpx.post(f"{fuzz_server}/v1/chat/completions", timeout=120,
                       json={"model": "tiny:mod", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert r.status_code == 200 and time.perf_counter() - start < 60
    finally:
        slow.close()
