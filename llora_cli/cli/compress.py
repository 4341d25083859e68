"""`llora compress`: a base or merged checkpoint to a quantized base, with measured quality."""

from __future__ import annotations

from typing import Annotated

import typer

from llora_cli.cli.options import ArtifactRef, JsonOpt, NameOpt, command_line, err, open_store, print_json


def compress(
    ref: ArtifactRef,
    method: Annotated[str, typer.Option(help="nf4, int8, gguf-f16, gguf-q8_0, gguf-q4_0 or gguf-q4_k.")],
    name: NameOpt = None,
    eval_n: Annotated[int, typer.Option(help="Held-out rows per task (reasoning, automation, code) for the "
                                             "accuracy comparison; 0 skips it.")] = 16,
    zstd: Annotated[bool, typer.Option("--zstd", help="Also store a zstd-packed copy for transfer, when it saves "
                                                      "space (the ratio is recorded either way).")] = False,
    json_: JsonOpt = False,
) -> None:
    """Compress a base or merged checkpoint; the quality vs the source is measured and recorded.

    Adapters are merged first; modifiers are never compressed (they are trained on a
    compressed base). The result is a 'compressed' artifact that can be deployed and
    used as --base for modifier training.

    Example: llora compress smollm2 --method gguf-q8_0
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from llora_cli.cli.artifacts import render_quality
    from llora_cli.compress import compress as run_compress

    with Progress(TextColumn("[bold]compressing"), BarColumn(), MofNCompleteColumn(), console=err()) as bar:
        task = bar.add_task("compress", total=None)
        report = run_compress(open_store(), ref, method, name=name, eval_n=eval_n, zstd=zstd, command=command_line(),
                              progress=lambda done, total: bar.update(task, completed=done, total=total))
    if json_:
        print_json(report.to_json())
        return
    c = report.compressed
    err().print(f"compressed '{report.source.name}' to '{c.name}' ({c.id}) with {report.method}: "
                f"{report.bytes / 2**20:.1f} MiB, {report.ratio:.3f} of the source in bf16, {report.seconds} s")
    z = c.meta["compression"].get("zstd")
    if z:
        err().print(f"zstd (level {z['level']}): {z['ratio']:.3f} of the files; {z['note']}")
    render_quality(c.meta)
