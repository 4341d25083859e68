"""Pure tensor operations of the merge: LoRA / rsLoRA / DoRA deltas and quantization round trips.

All arithmetic is fp32 (or wider); callers cast the result to the output dtype.
Shapes: W [out, in], A [r, in], B [out, r], magnitude [out].
"""

from __future__ import annotations

import math
import re


def lora_scale(config: dict, module: str) -> float:
    """PEFT's scaling for ``module``: alpha / r, or alpha / sqrt(r) with rslora; rank/alpha patterns honoured."""
    r = config["r"]
    alpha = config["lora_alpha"]
    for key, value in (config.get("rank_pattern") or {}).items():
        if re.fullmatch(rf"(.*\.)?{key}", module):
            r = value
    for key, value in (config.get("alpha_pattern") or {}).items():
        if re.fullmatch(rf"(.*\.)?{key}", module):
            alpha = value
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def merge_weight(W, A, B, scale: float, magnitude=None):
    """The merged weight in fp32: ``W + scale * B @ A``, or DoRA's ``m / ||W + sBA||_row * (W + sBA)``.

    W [out, in], A [r, in], B [out, r], magnitude [out] (DoRA) -> [out, in] fp32.
    """
    import torch

    # one fused fp32 kernel, one allocation: W + scale * (B @ A)
    w = torch.addmm(W.to(torch.float32), B.to(torch.float32), A.to(torch.float32), alpha=scale)
    if magnitude is None:
        return w
    norm = torch.linalg.norm(w, dim=1)
    return w.mul_((magnitude.to(torch.float32) / norm).unsqueeze(1))


def reference_apply(W, A, B, scale: float, x, magnitude=None, norm=None):
    """What base + adapter compute for inputs ``x`` [in, k], without forming the merged weight: [out, k] fp32.

    For DoRA, ``norm`` [out] is the row norm of ``W + sBA`` (computed here if not given).
    """
    import torch

    W32, A32, B32, x32 = (t.to(torch.float32) for t in (W, A, B, x))
    y = W32 @ x32 + scale * (B32 @ (A32 @ x32))
    if magnitude is None:
        return y
    if norm is None:
        norm = torch.linalg.norm(W32 + scale * (B32 @ A32), dim=1)
    return (magnitude.to(torch.float32) / norm).unsqueeze(1) * y


def nf4_round_trip(W, *, blocksize: int = 64):
    """The weight an NF4 (bitsandbytes) QLoRA run trained against: quantize then dequantize, in W's dtype."""
    import bitsandbytes.functional as F

    q, state = F.quantize_4bit(W.contiguous(), blocksize=blocksize, quant_type="nf4")
    return F.dequantize_4bit(q, state).to(W.dtype)


def int8_round_trip(W):
    """LLM.int8 row-wise absmax quantization, dequantized: what an int8 QLoRA run trained against."""
    import bitsandbytes.functional as F
    import torch

    q, scales, _ = F.int8_vectorwise_quant(W.to(torch.float16).contiguous())
    return F.int8_vectorwise_dequant(q, scales).to(W.dtype)


ROUND_TRIPS = {"nf4": nf4_round_trip, "int8": int8_round_trip}
