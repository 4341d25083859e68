"""Pure tensor operations of the merge: LoRA / rsLoRA / DoRA deltas and quantization round trips.

All arithmetic is fp32; results are cast to the output dtype by round to nearest even.
Shapes: W [out, in], A [r, in], B [out, r], magnitude [out]. The stream works on numpy
arrays; only the QLoRA round trips (bitsandbytes' own functions) need torch.
"""

from __future__ import annotations

import math
import re

from llora_cli.formats.dtypes import NUMPY_DTYPES, from_f32, to_f32


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


BLOCK_ELEMENTS = 1 << 18  # one fp32 row block (1 MiB) stays in cache through every step of merge_checked
UNIT_ROUNDOFF = {"F32": 0.0, "F16": 2.0**-11, "BF16": 2.0**-8}


def merge_checked(W, w_dtype: str, A, B, scale: float, probes, out_dtype: str, magnitude=None, *, out=None):
    """The merged weight cast to ``out_dtype`` plus its level-1 check, computed one row block at a time.

    Each block of rows is upcast to fp32, probed (``W x + scale * B (A x)``, the reference, computed before
    the weight is merged), merged (``W + (B @ A) * scale``, PEFT's order of operations; DoRA: rescaled by
    ``magnitude / ||row||``), probed again, and cast into ``out``. A block is small enough to stay in
    cache, so the weight crosses main memory twice (read in its dtype, written in ``out_dtype``) however
    many checks run on it.

    W [out, in] of safetensors dtype ``w_dtype``, A [r, in], B [out, r] (fp32), probes [k, in] fp32,
    magnitude [out] (DoRA); arrays are numpy (BF16 as uint16 bits).
    Returns (out, figures): ``max_diff`` and ``sum_diff`` of |merged x - reference| (fp32 merged weight,
    every row), ``max_ref`` = max |reference|, ``n`` = number of compared values, and ``cast_ratio`` = the
    largest |out x - merged x| / (|merged| |x|) over the rows of the first block (rounding to
    ``out_dtype`` bounds it by that dtype's unit roundoff).
    """
    import numpy as np

    f32 = np.float32
    n_out, n_in = W.shape
    A32, B32 = np.asarray(A, dtype=f32), np.asarray(B, dtype=f32)
    xT = np.ascontiguousarray(probes, dtype=f32).T  # [in, k] view of row-major probes
    ax = A32 @ xT
    if out is None:
        out = np.empty((n_out, n_in), dtype=NUMPY_DTYPES[out_dtype])
    rows = max(1, BLOCK_ELEMENTS // max(n_in, 1))
    work = np.empty((min(rows, n_out), n_in), dtype=f32)
    delta = np.empty_like(work)
    scratch = np.empty(work.shape, dtype=np.uint32) if out_dtype == "BF16" else None
    max_diff = max_ref = sum_diff = cast_ratio = 0.0
    for i in range(0, n_out, rows):
        j = min(i + rows, n_out)
        w, d = work[: j - i], delta[: j - i]
        to_f32(W[i:j], w_dtype, out=w)
        Bi = B32[i:j]
        ref = w @ xT
        ref += (Bi @ ax) * f32(scale)  # base + adapter without the merged weight
        np.matmul(Bi, A32, out=d)
        d *= f32(scale)
        w += d
        if magnitude is not None:
            # PEFT's DoRA: m / ||W + s B A||_row * (W + s B A)
            factor = (np.asarray(magnitude[i:j], dtype=f32) / np.linalg.norm(w, axis=1)).astype(f32)
            ref *= factor[:, None]
            w *= factor[:, None]
        wx = w @ xT
        diff = np.abs(wx - ref)
        max_diff = max(max_diff, float(diff.max()))
        sum_diff += float(diff.sum())
        max_ref = max(max_ref, float(np.abs(ref).max()))
        o = out[i:j]
        from_f32(w, out_dtype, out=o, scratch=None if scratch is None else scratch[: j - i])
        if out_dtype != "F32" and i == 0:
            # the cast is one elementwise rounding: checked on the first row block, which keeps the
            # kernel at five passes over each block instead of nine
            bound = np.abs(w) @ np.abs(xT)
            got = to_f32(o, out_dtype) @ xT
            cast = np.abs(got - wx) / np.maximum(bound, 1e-30)
            cast_ratio = max(cast_ratio, float(cast.max()))
    return out, {"max_diff": max_diff, "max_ref": max_ref, "sum_diff": sum_diff, "n": n_out * xT.shape[1],
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
