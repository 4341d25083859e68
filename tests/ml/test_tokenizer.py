"""The tokenizer files of a GGUF artifact (written at deploy, derived files) and ChatTokenizer (tokenizers + jinja2,
no transformers): the same token ids and text as transformers' tokenizer of the GGUF, on the tiny model and on
SmolLM2; `llora run` on the llama.cpp engine imports neither transformers nor torch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

TEXTS = ["The capital of France is", "What is 12 plus 30?", "def add(a, b):\n    return a + b\n",
         '{"name": "send_email", "arguments": {"to": "bob"}}', "  leading and trailing spaces  ", "tabs\tand\n\nnewlines",
         "Ünïcödé — “quotes”, émojis 🙂👍🏽 and 中文", "numbers 1234567890 3.14159 -42", "<|im_start|> is a control token",
         "x" * 300, "a", "don't stop , they're here ."]
CHATS = [
    [{"role": "user", "content": t} for t in TEXTS[:1]],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Set a timer for 5 minutes"}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"},
     {"role": "user", "content": "What is 12 plus 30?"}],
    *[[{"role": "user", "content": t}] for t in TEXTS[1:]],
]


def assert_same_as_transformers(ours, ref) -> None:
    """ids through the chat template (with and without the generation prompt), plain encodes with special tokens,
    and decoding (whole, and every prefix: what the streamer decodes) with and without the special tokens."""
    assert ours.chat_template == ref.chat_template
    assert ours.eos_token_id == ref.eos_token_id and ours.pad_token_id == ref.pad_token_id
    for chat in CHATS:
        for gen in (True, False):
            want = list(ref.apply_chat_template(chat, add_generation_prompt=gen, return_dict=True)["input_ids"])
            got = ours.apply_chat_template(chat, add_generation_prompt=gen)["input_ids"]
            assert got == want, chat
    for text in TEXTS:
        ids = ref(text)["input_ids"]
        assert ours(text)["input_ids"] == list(ids), text
        chat_ids = ours.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)["input_ids"]
        for skip in (True, False):
            assert ours.decode(chat_ids, skip_special_tokens=skip) == ref.decode(chat_ids, skip_special_tokens=skip)
        for k in range(1, len(ids) + 1):  # partial byte sequences included: the streamer holds back at "\ufffd"
            assert ours.decode(ids[:k], skip_special_tokens=True) == ref.decode(ids[:k], skip_special_tokens=True)


@pytest.fixture
def gguf_base(cli, store, tiny_model_dir):
    cli.json("bases", "add", str(tiny_model_dir), "--name", "tiny")
    cli.json("compress", "tiny", "--method", "gguf-q8_0", "--eval-n", "0", "--name", "tq8")
    return store.resolve("tq8")


def test_deploy_writes_tokenizer_files_as_derived_files(gguf_base, cli, store):
    from llora_cli import tokenizer

    model_dir = store.path_of(gguf_base.id)
    assert tokenizer.files_dir(model_dir) is None  # the payload is the GGUF file alone
    cli.json("deploy", "tq8")
    after = store.get(gguf_base.id)
    assert after.state == "deployed" and after.content_hash == gguf_base.content_hash  # payload unchanged
    assert tokenizer.files_dir(model_dir) == model_dir / "derived" / "tokenizer"
    files = {f["path"] for f in cli.json("show", "tq8")["files"]}
    assert {"derived/tokenizer/tokenizer.json", "derived/tokenizer/tokenizer_config.json"} <= files
    assert cli.json("verify", "tq8")["problems"] == []


def test_chat_tokenizer_matches_transformers_on_the_gguf(gguf_base, cli, store):
    from transformers import AutoTokenizer

    from llora_cli import tokenizer
    from llora_cli.loading import load_tokenizer

    cli.json("deploy", "tq8")
    model_dir = store.path_of(gguf_base.id)
    ref = AutoTokenizer.from_pretrained(model_dir, gguf_file="model.gguf")
    ours = tokenizer.ChatTokenizer(tokenizer.files_dir(model_dir))
    assert_same_as_transformers(ours, ref)
    # the transformers engine reads the same files now, and they give what the GGUF gave
    assert_same_as_transformers(ours, load_tokenizer(model_dir))


def test_chat_tokenizer_matches_transformers_on_a_safetensors_model(tiny_model_dir):
    from transformers import AutoTokenizer

    from llora_cli.tokenizer import ChatTokenizer

    assert_same_as_transformers(ChatTokenizer(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir))


BLOCKY_TEMPLATE = """{{ bos_token }}
{% for m in messages %}
    {% if m['role'] == 'tool' %}{{ raise_exception('no tools here') }}{% endif %}
    {% if loop.index > 4 %}{% break %}{% endif %}
    <{{ m['role'] }}>{{ m['content'] | tojson }}
{% endfor %}
{% if add_generation_prompt %}
    <assistant>
{% endif %}
"""


def test_chat_template_renders_as_in_transformers(tiny_model_dir, tmp_path):
    """transformers' jinja environment: trim_blocks/lstrip_blocks, loopcontrols, its tojson (no HTML escaping),
    raise_exception, the special tokens as variables."""
    import shutil

    import jinja2
    from transformers import AutoTokenizer

    from llora_cli.tokenizer import ChatTokenizer

    d = tmp_path / "tok"
    shutil.copytree(tiny_model_dir, d)
    (d / "chat_template.jinja").write_text(BLOCKY_TEMPLATE)
    ref, ours = AutoTokenizer.from_pretrained(d), ChatTokenizer(d)
    chat = [{"role": "user", "content": f"<b>{i} & 'x'</b> ü"} for i in range(6)]
    want = ref.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert ours.render(chat) == want
    assert "<user>\"<b>3 & 'x'</b> ü\"" in want and "<b>4" not in want  # no escaping; the loop broke after 4
    assert ours.apply_chat_template(chat, add_generation_prompt=True)["input_ids"] == list(
        ref.apply_chat_template(chat, add_generation_prompt=True, return_dict=True)["input_ids"])
    with pytest.raises(jinja2.TemplateError, match="no tools here"):
        ours.render([{"role": "tool", "content": "x"}])


def test_run_on_llama_cpp_writes_missing_files_and_never_imports_torch(gguf_base, llora_home, cli, store):
    """An older deployment (deployed before tokenizer files existed) gets them on its first run; later runs
    import neither transformers nor torch, and the request is still logged."""
    pytest.importorskip("llama_cpp", reason="the llama.cpp engine is an optional extra (llora[llamacpp])")
    from llora_cli import tokenizer

    store.deploy(gguf_base.id)  # the catalog transition alone, as deployments made before this change
    model_dir = store.path_of(gguf_base.id)
    assert tokenizer.files_dir(model_dir) is None
    first = cli.json("run", "--engine", "llamacpp", "--max-tokens", "4", "What is 12 plus 30?")
    assert tokenizer.files_dir(model_dir) is not None and first["engine"] == "llamacpp"
    code = textwrap.dedent("""
        import json, sys
        from llora_cli.cli.main import app
        try:
            app(["run", "--engine", "llamacpp", "--max-tokens", "4", "--json", "What is 12 plus 30?"],
                standalone_mode=False)
        except SystemExit as e:
            assert not e.code, e.code
        print(json.dumps([m for m in ("torch", "transformers", "peft") if m in sys.modules]))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"LLORA_HOME": str(llora_home), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert json.loads(lines[-1]) == []
    second = json.loads(lines[-2])
    assert second["text"] == first["text"] and second["tokens_in"] == first["tokens_in"]  # greedy: the same reply
    logged = cli.json("logs", "list")
    assert [r["id"] for r in logged] == [second["log_id"], first["log_id"]]


@pytest.mark.slow
def test_chat_tokenizer_matches_transformers_on_smollm2(tmp_path):
    from transformers import AutoTokenizer

    from llora_cli import tokenizer
    from llora_cli.bases import builtin_gguf

    gguf = builtin_gguf("smollm2")
    tokenizer.save_from_gguf(gguf, tmp_path)
    ref = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    ours = tokenizer.ChatTokenizer(tmp_path)
    assert "You are a helpful AI assistant named SmolLM" in ours.render([{"role": "user", "content": "hi"}])
    assert_same_as_transformers(ours, ref)
