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


BLOCK_ELEMENTS = 1 << 18  # one fp32 row block (1 MiB) stays in cache through every step of merge_checked


def merge_checked(W, A, B, scale: float, probes, out_dtype, magnitude=None, *, out=None):
    """The merged weight cast to ``out_dtype`` plus its level-1 check, computed one row block at a time.

    Each block of rows is upcast to fp32, probed (``W x + scale * B (A x)``, the reference, computed before
    the weight is merged), merged with one fused ``addmm_`` (DoRA: rescaled by ``magnitude / ||row||``),
    probed again, and cast into ``out``. A block is small enough to stay in cache, so the weight crosses
    main memory twice (read in its dtype, written in ``out_dtype``) however many checks run on it.

    W [out, in], A [r, in], B [out, r], probes [k, in] (row-major: ``w @ probes.T`` is ~4x faster on CPU
    than a product with an [in, k] matrix), magnitude [out] (DoRA).
    Returns (out, figures): ``max_diff`` and ``sum_diff`` of |merged x - reference| (fp32 merged weight,
    every row), ``max_ref`` = max |reference|, ``n`` = number of compared values, and ``cast_ratio`` = the
    largest |out x - merged x| / (|merged| |x|) over the rows of the first block (rounding to ``out_dtype``
    bounds it by that dtype's unit roundoff).
    """
    import torch

    f32 = torch.float32
    n_out, n_in = W.shape
    A32, B32 = A.to(f32), B.to(f32)
    x32 = probes.to(f32).contiguous().T  # [in, k] view of row-major probes
    ax = A32 @ x32
    x_abs = x32.abs()
    if out is None:
        out = torch.empty((n_out, n_in), dtype=out_dtype)
    rows = max(1, BLOCK_ELEMENTS // max(n_in, 1))
    work = torch.empty((min(rows, n_out), n_in), dtype=f32)
    max_diff = max_ref = sum_diff = cast_ratio = 0.0
    for i in range(0, n_out, rows):
        j = min(i + rows, n_out)
        w = work[: j - i]
        w.copy_(W[i:j])
        Bi = B32[i:j]
        ref = (w @ x32).addmm_(Bi, ax, alpha=scale)  # base + adapter without the merged weight
        if magnitude is None:
            w.addmm_(Bi, A32, alpha=scale)
        else:
            # PEFT's DoRA: m / ||W + s B A||_row * (W + s B A); the reference's norm is formed separately
            ref_norm = torch.linalg.vector_norm(w + scale * (Bi @ A32), dim=1)
            ref.mul_((magnitude[i:j].to(f32) / ref_norm).unsqueeze(1))
            w.addmm_(Bi, A32, alpha=scale)
            w.mul_((magnitude[i:j].to(f32) / torch.linalg.vector_norm(w, dim=1)).unsqueeze(1))
        wx = w @ x32
        diff = (wx - ref).abs_()
        max_diff = max(max_diff, float(diff.max()))
        sum_diff += float(diff.sum())
        max_ref = max(max_ref, float(ref.abs().max()))
        o = out[i:j]
        o.copy_(w)
        if out_dtype != f32 and i == 0:
            # the cast is one elementwise rounding: checked on the first row block, which keeps the
            # kernel at five passes over each block instead of nine
            bound = w.abs_() @ x_abs
            cast = (o.to(f32) @ x32 - wx).abs_().div_(bound.clamp_min_(1e-30))
            cast_ratio = max(cast_ratio, float(cast.max()))
    return out, {"max_diff": max_diff, "max_ref": max_ref, "sum_diff": sum_diff, "n": n_out * x32.shape[1],
                 "cast_ratio": cast_ratio}


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
