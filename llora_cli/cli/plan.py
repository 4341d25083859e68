"""`llora plan`: estimated memory of loading, merging and compressing an artifact, and the load strategy."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from llora_cli.cli.options import ArtifactRef, JsonOpt, human_bytes, open_store, out, print_json


def plan(
    ref: ArtifactRef,
    memory: Annotated[Optional[str], typer.Option(help="Plan for this much free memory (e.g. 2GiB) instead of this machine's.")] = None,
    delivery: Annotated[bool, typer.Option("--delivery", help="Merged checkpoint: compare shipping it fused or as "
                                           "adapter + recipe (low-bandwidth) and recommend one.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Estimate the memory of loading (fp32/bf16/nf4), merging and compressing an artifact, and the strategy.

    Nothing is loaded: sizes come from safetensors headers, free memory from the OS.

    With --delivery (a merged checkpoint): bytes of the fused files and of the
    low-bandwidth package (kept adapter + recipe), the receiver's rebuild peak,
    and the recommended path (llora export --delivery auto follows it).

    Example: llora plan smollm2 --memory 1GiB; llora plan my-merged --delivery
    """
    from llora_cli.loading import plan_for

    available = _parse_size(memory) if memory else None
    if delivery:
        from llora_cli.transfer import plan_delivery

        d = plan_delivery(open_store(), ref, available=available)
        if json_:
            print_json(d.to_json())
            return
        out().print(f"{d.artifact['kind']} '{d.artifact['name']}': fused {human_bytes(d.fused_bytes)}; low-bandwidth "
                    + (f"{human_bytes(d.low_bandwidth_bytes)} (rebuild peak {human_bytes(d.rebuild_peak_bytes)}, "
                       f"{human_bytes(d.available_bytes)} free)" if d.low_bandwidth_bytes is not None else "unavailable"))
        out().print(f"recommended: {d.recommended}: {d.reason}", highlight=False)
        return
    p = plan_for(open_store(), ref, available=available)
    if json_:
        print_json(p.to_json())
        return
    out().print(f"{p.artifact['kind']} '{p.artifact['name']}': {p.parameters:,} parameters, device {p.device}, "
                f"{human_bytes(p.available_bytes)} available")
    for k, v in p.load_bytes.items():
        out().print(f"  load {k}: {human_bytes(v)}")
    if p.merge_peak_bytes is not None:
        out().print(f"  streaming merge peak: {human_bytes(p.merge_peak_bytes)}")
    out().print(f"  streaming compress peak: {human_bytes(p.compress_peak_bytes)}")
    out().print(f"strategy: {p.strategy} ({p.dtype}): {p.reason}")


def _parse_size(text: str) -> int:
    from llora_store.errors import BadInput

    units = {"": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "kb": 10**3, "mb": 10**6, "gb": 10**9}
    t = text.strip().lower()
    num = t.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = t[len(num):]
    try:
        return int(float(num) * units[unit])
    except (ValueError, KeyError):
        raise BadInput(f"cannot read memory size {text!r}; use e.g. 512MiB or 2GiB") from None
