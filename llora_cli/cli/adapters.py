"""``llora adapters``: list, show and import training adapters."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llora_cli.cli.kinds import kind_app
from llora_cli.cli.options import JsonOpt, NameOpt, command_line, err, open_store, print_json

app = kind_app("adapter")


@app.command("import")
def import_(
    peft_dir: Annotated[Path, typer.Argument(help="A PEFT LoRA adapter directory (adapter_config.json + safetensors).")],
    base: Annotated[str, typer.Option("--base", "-b", help="The base it was trained on (id, prefix or name).")],
    name: NameOpt = None,
    quantization: Annotated[str, typer.Option(help="Quantization of the base during training: none, nf4, int8 (rule R4).")] = "none",
    json_: JsonOpt = False,
) -> None:
    """Register an existing PEFT adapter as a trained adapter; refused if it does not fit the base.

    Example: llora adapters import ./my-lora --base smollm2
    """
    from llora_cli.adapters import import_adapter

    store = open_store()
    art = import_adapter(store, peft_dir, base, name=name, quantization=quantization, command=command_line())
    if json_:
        print_json(store.describe(art.id).to_json())
    else:
        err().print(f"imported adapter '{art.name}' ({art.id}) on base {base}")
        for step, why in (art.meta.get("support") or {}).items():
            if why:
                err().print(f"  note: {step.replace('_', ' ')} will refuse it: {why}")
