"""``llora modifiers``: list, show and import runtime modifiers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llora_cli.cli.kinds import kind_app
from llora_cli.cli.options import JsonOpt, NameOpt, command_line, err, open_store, print_json

app = kind_app("modifier")


@app.command("import")
def import_(
    peft_dir: Annotated[Path, typer.Argument(help="A PEFT LoRA adapter directory (adapter_config.json + safetensors).")],
    base: Annotated[str, typer.Option("--base", "-b", help="The base it was trained on and will run on (R6).")],
    domain: Annotated[str, typer.Option("--domain", "-d", help="What it is for (code, reasoning, automation, ...).")],
    name: NameOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Register an existing PEFT LoRA, trained elsewhere on BASE, as a runtime modifier (state trained).

    Shapes are checked against BASE like `adapters import`; the modifier then runs only on BASE (rule R6):
    deploy it with `llora deploy NAME` and run it with `llora run --modifier NAME`. On a GGUF base it is
    converted to a llama.cpp LoRA at deploy, like trained modifiers.

    Example: llora modifiers import ./sql-lora --base smollm2 --domain sql
    """
    from llora_cli.adapters import import_adapter

    store = open_store()
    art = import_adapter(store, peft_dir, base, name=name, kind="modifier", domain=domain, command=command_line())
    if json_:
        print_json(store.describe(art.id).to_json())
        return
    err().print(f"imported modifier '{art.name}' ({art.id}, domain {art.domain}) on {base}")
    for step, why in (art.meta.get("support") or {}).items():
        if why:
            err().print(f"  note: {step.replace('_', ' ')} will refuse it: {why}")
