"""`llora merge`: merge a training adapter into the exact base it was trained on, verified."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from llora_cli.cli.options import ArtifactRef, JsonOpt, NameOpt, command_line, err, open_store, print_json


def merge(
    ref: ArtifactRef,
    keep_adapter: Annotated[bool, typer.Option("--keep-adapter", help="Keep the adapter's files (state 'merged').")] = False,
    dtype: Annotated[Optional[str], typer.Option(
        help="Output dtype: bf16, fp16 or fp32 (default bf16; fp32 for a classifier).")] = None,
    name: NameOpt = None,
    base: Annotated[Optional[str], typer.Option(help="Base to merge into (default: the one it was trained on; R3).")] = None,
    verify: Annotated[str, typer.Option(help="tensors (probe vectors per tensor) or full (+ logits vs PEFT).")] = "full",
    naive_qlora: Annotated[bool, typer.Option("--naive-qlora", help="QLoRA adapter: skip the quantization round trip "
                                              "(R4; the measured error is recorded).")] = False,
    json_: JsonOpt = False,
) -> None:
    """Merge a trained training adapter into its base: streaming, verified, then the adapter is discarded.

    Refuses modifiers (R1), adapters not in 'trained' (R2), another base (R3).
    A QLoRA adapter is merged into the quantize-dequantized base it saw (R4).

    Example: llora merge my-adapter --dtype bf16
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from llora_cli.merge import merge as run_merge

    with Progress(TextColumn("[bold]merging"), BarColumn(), MofNCompleteColumn(), console=err()) as bar:
        task = bar.add_task("merge", total=None)
        report = run_merge(open_store(), ref, base_ref=base, dtype=dtype, name=name, keep_adapter=keep_adapter,
                           verify=verify, naive_qlora=naive_qlora, command=command_line(),
                           progress=lambda done, total: bar.update(task, completed=done, total=total))
    if json_:
        print_json(report.to_json())
        return
    m, tc, fc = report.merged, report.tensor_check, report.full_check
    err().print(f"merged into '{m.name}' ({m.id}), {report.dtype}, {report.tensors_merged} of {report.tensors_total} "
                f"tensors adapted; adapter now '{report.adapter_state}'")
    err().print(f"  tensor check: max relative error {tc['max_rel_error']:.2e} (tolerance {tc['tolerance']:.0e})")
    if fc.get("level") == "full":
        err().print(f"  logits check: max relative error {fc['max_rel_error']:.2e} (tolerance {fc['tolerance']:.0e})")
    else:
        err().print(f"  logits check skipped: {fc.get('reason')}")
