"""`llora export` and `llora import`: move artifacts between stores."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llora_cli.cli.options import ArtifactRef, JsonOpt, NameOpt, command_line, err, open_store, print_json


def export(
    ref: ArtifactRef,
    to: Annotated[Path, typer.Option("--to", help="Directory to write the export into.")],
    low_bandwidth: Annotated[bool, typer.Option("--low-bandwidth", help="Merged checkpoint: ship only the kept "
                                                "adapter and a recipe; the receiver rebuilds it.")] = False,
    format_: Annotated[str, typer.Option("--format", help="store (for llora import), vllm (base + deployed "
                                         "modifiers + serve.sh), ollama (Modelfile: GGUF base + one adapter) or "
                                         "gguf (one file for llama.cpp), gguf-lora (a modifier as a llama.cpp LoRA).")] = "store",
    modifier: Annotated[Optional[str], typer.Option(help="--format ollama: the one modifier to attach.")] = None,
    delivery: Annotated[Optional[str], typer.Option(
        help="Merged checkpoint: fused (every file), low-bandwidth (= --low-bandwidth) or auto (llora plan "
             "--delivery's choice from the sizes and the free memory); recorded in the export.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Export an artifact for another store, or a deployment for an engine that scales.

    A merged checkpoint travels fused (every file) or low-bandwidth (its kept adapter, with a
    classifier's head, and a recipe; the receiver rebuilds it on its own copy of the base and
    checks the content hash). --delivery auto picks one as llora plan --delivery says.

    Example: llora export my-merged --to /shared/llora --low-bandwidth
    Example: llora export smollm2 --format vllm --to ./deploy
    """
    if format_ != "store":
        from llora_cli.exports import export_engine

        out = export_engine(open_store(), ref, format_, to, modifier_ref=modifier)
        print_json({"path": str(out), "format": format_}) if json_ else err().print(f"exported ({format_}) to {out}")
        return
    from llora_cli.transfer import export_artifact

    out = export_artifact(open_store(), ref, to, low_bandwidth=low_bandwidth, delivery=delivery)
    print_json({"path": str(out)}) if json_ else err().print(f"exported to {out}")


def import_(
    src: Annotated[Path, typer.Argument(metavar="DIR", help="A directory written by llora export.")],
    name: NameOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Import an exported artifact; a low-bandwidth export is rebuilt on the local base and hash-checked.

    Example: llora import /shared/llora/3f9a2c1d7e4b
    """
    from llora_cli.transfer import import_artifact

    store = open_store()
    art = import_artifact(store, src, name=name, command=command_line())
    print_json(store.describe(art.id).to_json()) if json_ else err().print(
        f"imported {art.kind} '{art.name}' ({art.id})")
