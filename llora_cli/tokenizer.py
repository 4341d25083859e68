"""A GGUF model's tokenizer as files beside it, and a tokenizer that runs from those files without transformers.

transformers builds a GGUF model's tokenizer from the file's metadata on every load (``AutoTokenizer`` with
``gguf_file``: importing transformers and torch, then converting the vocabulary: ~7 s of every `llora run` on the
llama.cpp engine). The llama.cpp engine needs only token ids and text, so:

- ``ensure`` writes that tokenizer once, as transformers' own ``save_pretrained`` files, under ``derived/tokenizer/``
  of the GGUF artifact: a derived file (recorded, checked by verify, outside the content hash). `llora deploy`
  writes it for a GGUF base; an engine opening an older deployment writes it on first use. One path for every
  GGUF artifact (compressed here, or a .gguf file added as a base), and the tokenizer stays exactly the one
  transformers derives from the GGUF, which the transformers engine uses too (``loading.load_tokenizer`` reads the
  same files when they exist).
- ``ChatTokenizer`` reads them with the ``tokenizers`` library and renders the chat template with jinja2 as
  transformers does (sandboxed environment, trim_blocks/lstrip_blocks, loopcontrols, its ``tojson``,
  ``raise_exception`` and ``strftime_now``, the named special tokens as variables), then encodes the text without
  adding special tokens: the ids of transformers' ``apply_chat_template(add_generation_prompt=True)``, and its
  ``decode(skip_special_tokens=True)`` (tests/ml/test_tokenizer.py checks both on a tiny model and on SmolLM2).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from llora_cli import modelfiles
from llora_store.errors import BadInput

if TYPE_CHECKING:  # annotations only (fastrun.py reads tokenizers without the ORM)
    from llora_store import Store
    from llora_store.models import Artifact

DIR = "derived/tokenizer"
# transformers' named special tokens (SPECIAL_TOKENS_ATTRIBUTES): the variables a chat template sees
SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def files_dir(model_dir: Path) -> Path | None:
    """Where ``model_dir``'s tokenizer files are: ``derived/tokenizer/`` (a GGUF artifact), the directory itself
    (a safetensors model), or None (a GGUF artifact not converted yet)."""
    for d in (model_dir / DIR, model_dir):
        if (d / "tokenizer.json").is_file():
            return d
    return None


def ensure(store: Store, artifact: Artifact) -> Path:
    """The directory of ``artifact``'s tokenizer files; for a GGUF artifact without them, transformers'
    tokenizer of the GGUF is saved once and recorded as derived files (imports transformers, a few seconds)."""
    import shutil

    model_dir = store.path_of(artifact.id)
    found = files_dir(model_dir)
    if found is not None:
        return found
    if not (model_dir / modelfiles.GGUF_NAME).is_file():
        raise BadInput(f"{artifact.kind} '{artifact.name}' has no tokenizer files (tokenizer.json)")
    staging = store.new_staging(f"{artifact.id}-tokenizer")  # owned; `llora db gc` removes it if this process dies
    tmp = staging / "tokenizer"
    try:
        save_from_gguf(model_dir / modelfiles.GGUF_NAME, tmp)
        for f in sorted(tmp.iterdir()):  # tokenizer.json last: its presence marks the set complete
            if f.name != "tokenizer.json":
                store.add_derived(artifact.id, f"{DIR}/{f.name}", f)
        store.add_derived(artifact.id, f"{DIR}/tokenizer.json", tmp / "tokenizer.json")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return model_dir / DIR


def save_from_gguf(gguf_path: Path, out_dir: Path) -> None:
    """transformers' tokenizer of the GGUF file (the one ``AutoTokenizer`` with ``gguf_file`` builds), saved as
    tokenizer files in ``out_dir``."""
    from llora_cli.quiet import quiet_libraries

    quiet_libraries()
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name).save_pretrained(out_dir)


def _token(value) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class ChatTokenizer:
    """The subset of a transformers fast tokenizer the engines use (``chat_template``, ``apply_chat_template``,
    ``__call__``, ``decode``, ``eos_token_id``/``pad_token_id``), from ``tokenizer.json`` +
    ``tokenizer_config.json`` (+ ``chat_template.jinja``), with the ``tokenizers`` library and jinja2."""

    def __init__(self, directory: Path) -> None:
        from tokenizers import Tokenizer

        self.backend = Tokenizer.from_file(str(directory / "tokenizer.json"))
        cfg_path = directory / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        template = cfg.get("chat_template")
        if (directory / "chat_template.jinja").is_file():  # transformers prefers the separate file
            template = (directory / "chat_template.jinja").read_text()
        self.chat_template: str | None = template if isinstance(template, str) and template else None
        self.special_tokens_map = {k: t for k in SPECIAL if (t := _token(cfg.get(k))) is not None}
        ids = {k: self.backend.token_to_id(t) for k, t in self.special_tokens_map.items()}
        self.eos_token_id: int | None = ids.get("eos_token")
        self.bos_token_id: int | None = ids.get("bos_token")
        self.pad_token_id: int | None = ids.get("pad_token")
        # transformers skips its WordPiece-era clean-up for BPE models unless forced
        bpe = type(self.backend.model).__name__ == "BPE"
        self.clean_up = bool(cfg.get("clean_up_tokenization_spaces")) and (
            not bpe or bool(cfg.get("clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output")))
        self._template = None

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": self.backend.encode(text, add_special_tokens=add_special_tokens).ids}

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The chat template applied to ``messages`` (plain role/content dicts; None values dropped, as
        transformers does)."""
        if self._template is None:
            self._template = _compile(self.chat_template)
        messages = [{k: v for k, v in m.items() if v is not None} for m in messages]
        return self._template.render(messages=messages, tools=None, documents=None,
                                     add_generation_prompt=add_generation_prompt, **self.special_tokens_map)

    def apply_chat_template(self, messages: list[dict], *, add_generation_prompt: bool = False,
                            return_dict: bool = True) -> dict[str, list[int]] | list[int]:
        out = self(self.render(messages, add_generation_prompt), add_special_tokens=False)
        return out if return_dict else out["input_ids"]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        text = self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)
        if self.clean_up:
            for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                         (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
                text = text.replace(a, b)
        return text


def _compile(template: str):
    """The chat template in transformers' jinja environment (chat templates are untrusted code: sandboxed)."""
    from datetime import datetime

    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # transformers' filter: jinja's own escapes HTML characters
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(template)
