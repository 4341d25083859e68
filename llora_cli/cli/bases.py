"""``llora bases``: list, show and add base models."""

from __future__ import annotations

from typing import Annotated

import typer

from llora_cli.cli.kinds import kind_app
from llora_cli.cli.options import JsonOpt, NameOpt, command_line, err, open_store, print_json, progress_printer

app = kind_app("base")


@app.command("add")
def add(
    source: Annotated[str, typer.Argument(help="'smollm2', a local HF model directory, a .gguf file, or a hub id.")],
    name: NameOpt = None,
    convert_bin: Annotated[bool, typer.Option(
        "--convert-bin", help="Convert pickle weights (pytorch_model*.bin) to safetensors, read with "
                              "torch.load(weights_only=True); without it they are refused.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Register a base model, stored once as safetensors + config + tokenizer with its content hash.

    Example: llora bases add smollm2
    """
    from llora_cli.bases import add_base

    store = open_store()
    art = add_base(store, source, name=name, command=command_line(), progress=progress_printer(),
                   convert_bin=convert_bin)
    if json_:
        print_json(store.describe(art.id).to_json())
    else:
        err().print(f"added base '{art.name}' ({art.id}), content hash {art.content_hash[:12]}")
