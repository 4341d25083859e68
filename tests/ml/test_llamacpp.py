"""The llama.cpp engine: GGUF LoRA conversion at deploy, refusals, parity with the transformers engine on the
same GGUF weights, per-request modifier switching, `llora run --engine` and `llora serve` on llama.cpp."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests import tiny

pytest.importorskip("llama_cpp", reason="the llama.cpp engine is an optional extra (llora[llamacpp])")

PROBES = ["Set a timer for five minutes", "Write a function that adds two numbers.", "hi",
          "What is 12 plus 30?", "Turn off the kitchen lights", "The capital of France is"]


@pytest.fixture(scope="module")
def model64(tmp_path_factory):
    return tiny.build_tiny_llama(tmp_path_factory.mktemp("m64") / "tiny64", hidden=64, seed=1)


@pytest.fixture(scope="module")
def built_home(model64, tmp_path_factory):
    """The deployment, built once per module: a GGUF Q8_0 base and three modifiers trained on it (LoRA,
    rsLoRA, DoRA), deployed through `llora deploy` (so converted); each test gets a copy of this home."""
    from tests.conftest import Cli

    home = tmp_path_factory.mktemp("gguf-home") / "llora-home"
    cli = Cli()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLORA_HOME", str(home))
        cli.json("bases", "add", str(model64), "--name", "tiny")
        cli.json("compress", "tiny", "--method", "gguf-q8_0", "--eval-n", "0", "--name", "tq8")
        cli.json("data", "make", "automation", "--n", "24", "--name", "auto")
        cli.json("data", "make", "code", "--n", "24", "--name", "code")
        for name, data, domain, extra in (("auto-mod", "auto", "automation", []),
                                          ("code-mod", "code", "code", ["rslora=true"]),
                                          ("dora-mod", "auto", "reasoning", ["dora=true"])):
            cli.json("train", "--base", "tq8", "--data", data, "--kind", "modifier", "--domain", domain, "--name",
                     name, "max_steps=12", "learning_rate=0.02", *extra)
        cli.json("deploy", "tq8")
        notes = {name: cli.json("deploy", name)["note"] for name in ("auto-mod", "code-mod", "dora-mod")}
    return home, notes


@pytest.fixture
def gguf_deployment(built_home, llora_home):
    import shutil

    shutil.copytree(built_home[0], llora_home)
    return built_home[1]


def _softmax(x):
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


def test_deploy_converts_modifiers_to_llama_cpp_lora(gguf_deployment, cli, store):
    import gguf
    from safetensors.numpy import load_file

    assert gguf_deployment["auto-mod"] is None and gguf_deployment["code-mod"] is None
    assert "DoRA" in gguf_deployment["dora-mod"] and "transformers engine" in gguf_deployment["dora-mod"]
    mod = store.resolve("auto-mod")
    before = mod.content_hash
    path = store.path_of(mod.id) / "derived" / "adapter.gguf"
    assert path.is_file() and store.get(mod.id).content_hash == before  # recorded outside the content hash
    assert cli.json("verify", "auto-mod")["problems"] == []
    files = {f["path"] for f in cli.json("show", "auto-mod")["files"]}
    assert "derived/adapter.gguf" in files
    reader = gguf.GGUFReader(path)
    field = reader.fields["general.type"]
    assert bytes(field.parts[field.data[0]]).decode() == "adapter"
    alpha = reader.fields["adapter.lora.alpha"]
    cfg = json.loads((store.path_of(mod.id) / "adapter_config.json").read_text())
    assert float(alpha.parts[alpha.data[0]][0]) == cfg["lora_alpha"]
    tensors = {t.name: t for t in reader.tensors}
    peft = load_file(str(store.path_of(mod.id) / "adapter_model.safetensors"))
    a = peft["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    b = peft["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    ga = np.asarray(tensors["blk.0.attn_q.weight.lora_a"].data).reshape(a.shape)
    gb = np.asarray(tensors["blk.0.attn_q.weight.lora_b"].data).reshape(b.shape)
    assert np.array_equal(ga, a)  # A acts on the input: unchanged
    perm = b.reshape(4, 2, b.shape[0] // 8, -1).swapaxes(1, 2).reshape(b.shape)  # 4 heads: llama.cpp's row order
    assert np.array_equal(gb, perm) and not np.array_equal(gb, b)
    vb = peft["base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"]
    assert np.array_equal(np.asarray(tensors["blk.0.attn_v.weight.lora_b"].data).reshape(vb.shape), vb)
    # rsLoRA: llama.cpp scales by alpha / rank, PEFT by alpha / sqrt(rank): the scaling is folded into B
    code = store.resolve("code-mod")
    meta = store.get(code.id).meta["gguf_lora"]
    assert meta["scaling_folded"] is True and meta["alpha"] == 0.0
    dora = store.get(store.resolve("dora-mod").id)
    assert dora.state == "deployed" and "gguf_lora" not in dora.meta


def test_conversion_refuses_adapters_that_do_not_fit_the_base(gguf_deployment, tmp_path, store, cli, other_tiny_model_dir):
    import shutil

    from safetensors.numpy import load_file, save_file

    from llora_cli import gguflora
    from llora_store.errors import BadInput

    src = store.path_of(store.resolve("auto-mod").id)
    base_dir = store.path_of(store.resolve("tq8").id)
    # another base's shapes (hidden 32 vs 64)
    with pytest.raises(BadInput, match="do not fit the base weight"):
        gguflora.convert(src, other_tiny_model_dir, tmp_path / "x.gguf")
    # a module the base does not have (layer 7 of a 2-layer model)
    bad = tmp_path / "bad"
    shutil.copytree(src, bad, ignore=shutil.ignore_patterns("derived", "llora.json"))
    weights = load_file(str(bad / "adapter_model.safetensors"))
    weights = {k.replace("layers.1.", "layers.7."): v for k, v in weights.items()}
    save_file(weights, str(bad / "adapter_model.safetensors"))
    with pytest.raises(BadInput, match="which the base does not have"):
        gguflora.convert(bad, base_dir, tmp_path / "y.gguf")
    assert not (tmp_path / "x.gguf").exists() or (tmp_path / "x.gguf").stat().st_size == 0
    # DoRA: not for llama.cpp, said why
    with pytest.raises(gguflora.NotForLlamaCpp, match="DoRA"):
        gguflora.convert(store.path_of(store.resolve("dora-mod").id), base_dir, tmp_path / "z.gguf")


def _engines(store):
    from llora_cli.engine import resolve_deployment
    from llora_cli.engine.llamacpp import LlamaCppEngine
    from llora_cli.engine.transformers import TransformersEngine

    dep = resolve_deployment(store)
    return dep, TransformersEngine(store, dep), LlamaCppEngine(store, dep)


def test_parity_with_the_transformers_engine(gguf_deployment, store):
    import torch

    dep, tf, ll = _engines(store)
    mods = {m.name: m.id for m in dep.modifiers}
    assert ll.refused.keys() == {mods["dora-mod"]} and set(ll.adapters) == {mods["auto-mod"], mods["code-mod"]}
    stats = {}
    for label, adapter in (("base", None), ("auto", mods["auto-mod"]), ("code", mods["code-mod"])):
        kls, overlaps = [], []
        for prompt in PROBES:
            ids = tf.encode(prompt, None)
            with torch.inference_mode():
                if adapter is None:
                    with tf.model.disable_adapter():
                        t = tf.model(torch.tensor([ids])).logits[0, -1].numpy()
                else:
                    tf.model.set_adapter(adapter)
                    t = tf.model(torch.tensor([ids])).logits[0, -1].numpy()
            c = ll.next_token_logits(ids, adapter)
            p, q = _softmax(t), _softmax(c)
            kls.append(float(np.sum(p * (np.log(p) - np.log(q)))))
            overlaps.append(len(set(np.argsort(-t)[:5]) & set(np.argsort(-c)[:5])) / 5)
            stats.setdefault("logits", {})[(label, prompt)] = (t, c)
        stats[label] = (max(kls), float(np.mean(overlaps)))
    # tolerances measured on this tiny Q8_0 model (docs/runtime.md): KL < 1e-3, top-5 overlap >= 0.8
    for label in ("base", "auto", "code"):
        kl, overlap = stats[label]
        assert kl < 1e-3 and overlap >= 0.8, (label, kl, overlap)
    # the modifier's effect (its shift away from the base) is the same on both engines
    for label in ("auto", "code"):
        for prompt in PROBES:
            t_mod, c_mod = stats["logits"][(label, prompt)]
            t_base, c_base = stats["logits"][("base", prompt)]
            shift_t, shift_c = t_mod - t_base, c_mod - c_base
            cos = float(shift_t @ shift_c / (np.linalg.norm(shift_t) * np.linalg.norm(shift_c)))
            assert np.linalg.norm(shift_t) > 1e-2 and cos > 0.95, (label, prompt, cos)


def test_switching_modifiers_per_request_needs_no_reload(gguf_deployment, store):
    dep, _, ll = _engines(store)
    mods = {m.name: m for m in dep.modifiers}
    first = ll.generate("Set a timer", max_tokens=8)
    with_mod = ll.generate("Set a timer", modifier=mods["auto-mod"], max_tokens=8)
    again = ll.generate("Set a timer", max_tokens=8)
    assert first.text == again.text  # the adapter is off again and the cache was not reused across adapters
    assert with_mod.engine == "llamacpp" and with_mod.modifier.name == "auto-mod"
    assert ll.llm is not None and len(ll.handles) == 2  # one model, two adapters loaded once
    with pytest.raises(Exception, match="DoRA"):
        ll.generate("hi", modifier=mods["dora-mod"], max_tokens=2)


def test_run_engine_choice_and_refusals(gguf_deployment, cli, store):
    auto = cli.json("run", "Set a timer", "--modifier", "auto-mod", "--max-tokens", "6")
    assert auto["engine"] == "llamacpp" and auto["load"]["strategy"] == "llamacpp-gguf"
    tf = cli.json("run", "Set a timer", "--modifier", "auto-mod", "--max-tokens", "6", "--engine", "transformers")
    assert tf["engine"] == "transformers"
    assert [r["engine"] for r in cli.json("logs", "list")[:2]] == ["transformers", "llamacpp"]
    r = cli("run", "hi", "--modifier", "dora-mod", "--engine", "llamacpp")
    assert r.exit_code == 2 and "DoRA" in r.stderr and "--engine transformers" in r.stderr
    assert cli.json("run", "hi", "--modifier", "dora-mod", "--max-tokens", "3", "--engine", "transformers")["text"] is not None
    r = cli("run", "hi", "--engine", "vllm")
    assert r.exit_code == 2 and "--engine must be one of" in r.stderr
    r = cli("run", "hi", "--base", "tiny", "--engine", "llamacpp")
    assert r.exit_code == 2 and "llama.cpp runs GGUF models" in r.stderr and "llora compress" in r.stderr
    for engine in ("llamacpp", "transformers"):  # the tiny tokenizer merges digits: the calculator cannot force them
        r = cli("run", "2 * 3 =", "--calculator", "--engine", engine)
        assert r.exit_code == 2 and "one digit per token" in r.stderr and "Traceback" not in r.output


def test_export_gguf_lora(gguf_deployment, cli, store, tmp_path):
    out = cli.json("export", "auto-mod", "--format", "gguf-lora", "--to", str(tmp_path))
    assert out["path"].endswith("auto-mod.gguf")
    mod = store.resolve("auto-mod")
    assert open(out["path"], "rb").read() == (store.path_of(mod.id) / "derived" / "adapter.gguf").read_bytes()
    r = cli("export", "tq8", "--format", "gguf-lora", "--to", str(tmp_path))
    assert r.exit_code == 2 and "exports a modifier" in r.stderr


def test_serve_on_llama_cpp_with_the_openai_client(gguf_deployment, cli, store, llora_home):
    import os
    import subprocess
    import sys
    import time
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    import openai

    from tests.ml.test_serve import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", "from llora_cli.cli.entry import main; main()", "serve",
                             "--port", str(port), "--max-tokens", "32"],
                            env={**os.environ, "LLORA_HOME": str(llora_home)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        health = httpx.get(f"{url}/health").json()
        assert health["engine"] == "llamacpp" and sorted(health["modifiers"]) == ["auto-mod", "code-mod"]
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        models = client.models.list().data
        assert sorted(m.id for m in models) == ["tq8", "tq8:auto-mod", "tq8:code-mod"]  # DoRA: not on llama.cpp
        assert {m.model_extra["llora"]["engine"] for m in models} == {"llamacpp"}
        with pytest.raises(openai.BadRequestError, match="DoRA"):
            client.chat.completions.create(model="tq8:dora-mod", messages=[{"role": "user", "content": "x"}],
                                           max_tokens=4)
        reqs = [(m, p) for m in ("tq8", "tq8:auto-mod", "tq8:code-mod") for p in ("Set a timer", "Write code")]

        def ask(req):
            return client.chat.completions.create(model=req[0], messages=[{"role": "user", "content": req[1]}],
                                                  max_tokens=8).choices[0].message.content

        one_by_one = [ask(r) for r in reqs]
        with ThreadPoolExecutor(6) as pool:
            together = list(pool.map(ask, reqs))
        assert together == one_by_one  # queued on one context, the adapter switched per request
        pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="tq8:auto-mod", messages=[{"role": "user", "content": "Set a timer"}], max_tokens=8, stream=True)]
        assert "".join(pieces) == one_by_one[2]  # neither is stripped
        logs = cli.json("logs", "list", "--limit", "13")
        assert {r["engine"] for r in logs} == {"llamacpp"} and len(logs) == 13
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_request_fields_on_llama_cpp(gguf_deployment, store, llora_home):
    """Issue 11 on the llama.cpp engine: stop strings, n choices, stream usage, log-probabilities from llama.cpp's
    logits, the streamed text equal to the whole reply."""
    import openai
    import torch

    from llora_cli.engine.base import _byte_decoder
    from tests.ml.test_serve_fields import events, running_server

    user = [{"role": "user", "content": "Set a timer"}]
    with running_server(llora_home, "--max-tokens", "32") as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)

        def chat(**kw):
            return client.chat.completions.create(model="tq8", messages=user, **kw)

        full = chat(max_tokens=24).choices[0].message.content
        assert len(full) >= 16, full
        expected = full[:min(full.find(full[8:10]), full.find(full[12:15]))]
        stopped = chat(max_tokens=24, stop=[full[12:15], full[8:10]])
        assert (stopped.choices[0].message.content, stopped.choices[0].finish_reason) == (expected, "stop")
        streamed = "".join(c.choices[0].delta.content or "" for c in chat(max_tokens=24, stop=[full[12:15], full[8:10]],
                                                                          stream=True))
        assert streamed == expected
        whole = chat(max_tokens=24)
        assert "".join(c.choices[0].delta.content or "" for c in chat(max_tokens=24, stream=True)) == \
            whole.choices[0].message.content and whole.choices[0].finish_reason == "length"

        two = chat(n=2, temperature=1.0, seed=7, max_tokens=12)
        texts = [c.message.content for c in two.choices]
        assert texts == [chat(temperature=1.0, seed=s, max_tokens=12).choices[0].message.content for s in (7, 8)]
        assert texts[0] != texts[1]  # one after another on the one context, each with its own seed

        usage = events(f"{url}/v1/chat/completions", {"model": "tq8", "messages": user, "max_tokens": 12,
                                                      "stream_options": {"include_usage": True}})
        assert usage[-2]["choices"] == [] and usage[-2]["usage"] == chat(max_tokens=12).usage.model_dump(
            exclude_none=True)

        with pytest.raises(openai.BadRequestError, match="one digit per token"):  # the tiny tokenizer merges digits
            chat(max_tokens=4, extra_body={"calculator": True})

        reply = chat(max_tokens=6, logprobs=True, top_logprobs=3)
        content = reply.choices[0].logprobs.content
        assert len(content) == 6 and all(e.top_logprobs[0].logprob == e.logprob for e in content)  # greedy
    # the values are llama.cpp's own: the same logits read in this process, token by token
    _, tf, ll = _engines(store)
    to_char = {b: c for c, b in _byte_decoder().items()}
    ids = ll.encode("Set a timer", None)
    for entry in content:  # the token's id from its bytes (byte-level BPE symbols)
        token = tf.tokenizer.convert_tokens_to_ids("".join(to_char[b] for b in entry.bytes))
        lp = torch.log_softmax(torch.tensor(ll.next_token_logits(ids, None), dtype=torch.float64), -1)
        assert entry.logprob == pytest.approx(float(lp[token]), abs=1e-3)
        top = lp.topk(3)
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(top.values.tolist(), abs=1e-3)
        ids.append(token)


def _llora(llora_home, *args, debug=True):
    """`llora ARGS` as the console script runs it (cli/entry.py: the light path first), in its own process."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "LLORA_HOME": str(llora_home), **({"LLORA_DEBUG": "1"} if debug else {})}
    return subprocess.run([sys.executable, "-c", "from llora_cli.cli.entry import main; main()", *args],
                          capture_output=True, text=True, env=env, timeout=300)


def test_light_run_path_answers_and_logs_as_the_full_command(gguf_deployment, store, llora_home):
    """`llora run` without Typer and the ORM (fastrun.py + llora_store.lite) gives the full command's reply and
    request-log row; `--base` (which the light path leaves to the full command) is the reference."""
    keys = ("base", "modifier", "engine", "client", "prompt", "response", "tokens_in", "tokens_out", "params")
    for modifier in ("none", "auto-mod", "code"):  # the base alone, a name, a domain
        args = ["run", "--modifier", modifier, "--max-tokens", "6", "--json", "Set a timer for five minutes"]
        fast, full = _llora(llora_home, *args), _llora(llora_home, *args[:1], "--base", "tq8", *args[1:])
        assert fast.returncode == full.returncode == 0, (fast.stderr, full.stderr)
        assert "full path" not in fast.stderr  # LLORA_DEBUG=1 names the reason whenever the light path declines
        a, b = json.loads(fast.stdout), json.loads(full.stdout)
        assert (a["text"], a["tokens_in"], a["tokens_out"], a["modifier"], a["base"], a["params"]) == \
               (b["text"], b["tokens_in"], b["tokens_out"], b["modifier"], b["base"], b["params"])
        new, old = store.request_logs(limit=2)
        assert (new["id"], old["id"]) == (b["log_id"], a["log_id"])
        assert {k: old[k] for k in keys} == {k: new[k] for k in keys}
    # streamed: the answer on stdout, the summary line on stderr
    streamed = _llora(llora_home, "run", "--max-tokens", "6", "Set a timer for five minutes")
    plain = json.loads(_llora(llora_home, "run", "--max-tokens", "6", "--json", "Set a timer for five minutes").stdout)
    assert streamed.returncode == 0 and streamed.stdout == plain["text"] + "\n"
    assert "tq8 (llamacpp): " in streamed.stderr and "logged as #" in streamed.stderr


def test_light_run_path_imports_neither_the_orm_nor_typer(gguf_deployment, llora_home):
    import os
    import subprocess
    import sys

    script = ("import json, sys\nfrom llora_cli import fastrun\n"
              "code = fastrun.main(['llora', 'run', '--max-tokens', '3', '--json', 'hi'])\n"
              "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'sqlmodel', 'typer', "
              "'rich', 'transformers', 'torch', 'alembic'))\n"
              "sys.stderr.write(json.dumps({'code': code, 'heavy': heavy}))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "LLORA_HOME": str(llora_home)})
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == {"code": 0, "heavy": []}
    assert json.loads(proc.stdout)["engine"] == "llamacpp"


def test_light_run_path_leaves_errors_to_the_full_command(gguf_deployment, llora_home):
    r = _llora(llora_home, "run", "--modifier", "nosuch", "hi")
    assert r.returncode == 1 and "full path (NotFound" in r.stderr  # LLORA_DEBUG=1: why, and the traceback
    r = _llora(llora_home, "run", "--modifier", "nosuch", "hi", debug=False)
    said = " ".join(r.stderr.split())  # Rich wraps the message
    assert "error: no deployed modifier 'nosuch' on compressed 'tq8'" in said and "Traceback" not in said
    r = _llora(llora_home, "run", "--max-tokens", "0", "hi", debug=False)
    assert r.returncode == 2 and "--max-tokens must be between 1 and" in r.stderr and r.stdout == ""
    r = _llora(llora_home, "run", "--modifier", "dora-mod", "hi", debug=False)  # llama.cpp refuses DoRA
    assert r.returncode == 2 and "DoRA" in r.stderr and "--engine transformers" in r.stderr
