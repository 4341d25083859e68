"""Exports of a deployment for engines that scale: vLLM (multi-LoRA), Ollama (one adapter), llama.cpp (GGUF).

Each writes a self-contained directory (files copied, a command or Modelfile next to them) through a
``.partial`` directory renamed at the end, and refuses what the engine cannot run, with the reason.
The engines themselves are not run here; the tests check the written files.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

from llora_cli import modelfiles
from llora_cli.deploy import runs_on
from llora_cli.engine import is_gguf_base, resolve_deployment
from llora_cli.formats import peft
from llora_cli.loading import GGUF_NAME, stored_format
from llora_store import Store
from llora_store.errors import BadInput, Conflict

FORMATS = ("vllm", "ollama", "gguf", "gguf-lora")
# vLLM's accepted --max-lora-rank values (vllm/config: possible_max_ranks)
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def _copy_model(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True)
    for p in sorted(src.iterdir()):
        if p.is_file() and p.name not in ("llora.json", ".owner"):
            shutil.copyfile(p, dst / p.name)


def _publish(tmp: Path, out: Path) -> Path:
    tmp.rename(out)
    return out


def export_gguf_lora(store: Store, ref: str, to: Path) -> Path:
    """`llora export MODIFIER --format gguf-lora`: the modifier's llama.cpp LoRA file, for llama.cpp tools."""
    from llora_cli import gguflora

    art = store.resolve(ref)
    if art.kind != "modifier":
        raise BadInput(f"--format gguf-lora exports a modifier; '{art.name}' is {art.kind}")
    base = runs_on(store, art.id)
    if not is_gguf_base(store, base):
        raise BadInput(f"modifier '{art.name}' runs on {base.kind} '{base.name}', which is not a GGUF model",
                       hint="a llama.cpp LoRA needs the GGUF base it was trained on (llora compress --method gguf-*)")
    out = Path(to) / f"{art.name}.gguf"
    if out.exists():
        raise Conflict(f"{out} already exists", hint="remove it or export to another --to directory")
    src = gguflora.ensure(store, art, base)
    Path(to).mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    shutil.copyfile(src, tmp)
    return _publish(tmp, out)


def export_engine(store: Store, ref: str, fmt: str, to: Path, *, modifier_ref: str | None = None,
                  gguf_method: str = "gguf-f16") -> Path:
    if fmt not in FORMATS:
        raise BadInput(f"unknown --format {fmt!r}; choose store (default), {', '.join(FORMATS)}")
    if fmt == "gguf-lora":
        return export_gguf_lora(store, ref, to)
    dep = resolve_deployment(store, ref)
    base = dep.base
    out = Path(to) / f"{base.name}-{fmt}"
    if out.exists():
        raise Conflict(f"{out} already exists", hint="remove it or export to another --to directory")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        base_dir = store.path_of(base.id)
        if fmt == "vllm":
            if stored_format(base_dir) != "safetensors":
                raise BadInput(f"vLLM export needs a safetensors base; {base.kind} '{base.name}' is "
                               f"{stored_format(base_dir)}", hint="export the merged (or base) checkpoint it came from")
            _copy_model(base_dir, tmp / "base")
            args = ["vllm", "serve", "./base", "--served-model-name", base.name]
            ranks = []
            if dep.modifiers:
                mods = []
                for m in dep.modifiers:
                    cfg, keys = peft.read_keys(store.path_of(m.id))
                    why = peft.plain_lora_refusal(cfg, keys)
                    if why:
                        raise BadInput(f"modifier '{m.name}' cannot be exported to vLLM: {why}",
                                       hint="retire it before exporting, or serve it with llora serve")
                    ranks.append(max([cfg["r"], *(cfg.get("rank_pattern") or {}).values()]))
                    _copy_model(store.path_of(m.id), tmp / "modifiers" / m.name)
                    mods.append(f"{base.name}:{m.name}=./modifiers/{m.name}")
                top = max(ranks)
                allowed = [r for r in VLLM_RANKS if r >= top]
                if not allowed:
                    raise BadInput(f"LoRA rank {top} is above vLLM's largest --max-lora-rank ({VLLM_RANKS[-1]})")
                args += ["--enable-lora", "--max-loras", str(len(mods)), "--max-lora-rank", str(allowed[0]),
                         "--lora-modules", *mods]
            (tmp / "serve.sh").write_text("#!/bin/sh\n# written by llora export --format vllm\ncd \"$(dirname \"$0\")\"\n"
                                          f"exec {shlex.join(args)} \"$@\"\n")
            (tmp / "serve.sh").chmod(0o755)
            (tmp / "export.json").write_text(json.dumps({"format": "vllm", "base": base.id, "ranks": ranks,
                                                         "modifiers": [m.id for m in dep.modifiers]}, indent=2))
        elif fmt == "ollama":
            if stored_format(base_dir) != "gguf":
                raise BadInput(f"Ollama export needs a GGUF base; {base.kind} '{base.name}' is "
                               f"{stored_format(base_dir)}", hint=f"llora compress {base.name} --method gguf-q8_0")
            shutil.copyfile(base_dir / GGUF_NAME, tmp / GGUF_NAME)
            lines = ["# written by llora export --format ollama", f"FROM ./{GGUF_NAME}"]
            if modifier_ref is None and len(dep.modifiers) > 1:
                raise BadInput(f"Ollama takes one adapter per model and {len(dep.modifiers)} modifiers are deployed: "
                               f"{', '.join(m.name for m in dep.modifiers)}", hint="choose one with --modifier NAME")
            modifier = dep.find_modifier(modifier_ref) if modifier_ref else (dep.modifiers[0] if dep.modifiers else None)
            if modifier is not None:
                why = peft.plain_lora_refusal(*peft.read_keys(store.path_of(modifier.id)))
                if why:
                    raise BadInput(f"modifier '{modifier.name}' cannot be exported to Ollama: {why}",
                                   hint="export without --modifier, or serve it with llora serve")
                _copy_model(store.path_of(modifier.id), tmp / "adapter")
                lines.append("ADAPTER ./adapter")
            (tmp / "Modelfile").write_text("\n".join(lines) + "\n")
            (tmp / "export.json").write_text(json.dumps({"format": "ollama", "base": base.id,
                                                         "modifier": modifier.id if modifier else None}, indent=2))
        else:  # gguf: one file llama.cpp loads
            if stored_format(base_dir) == "gguf":
                shutil.copyfile(base_dir / GGUF_NAME, tmp / f"{base.name}.gguf")
            elif stored_format(base_dir) == "safetensors":
                from llora_cli.ggufwrite import write_gguf

                write_gguf(base_dir, tmp / f"{base.name}.gguf", gguf_method, name=base.name)
            else:
                raise BadInput(f"{base.kind} '{base.name}' is bitsandbytes {stored_format(base_dir)}; GGUF export "
                               "needs safetensors or GGUF weights", hint="export the checkpoint it was compressed from")
            (tmp / "export.json").write_text(json.dumps({"format": "gguf", "base": base.id,
                                                         "architecture": modelfiles.summarize_model(base_dir)
                                                         if stored_format(base_dir) == "safetensors" else None},
                                                        indent=2))
        return _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
