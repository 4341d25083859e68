"""llama.cpp's Q4_K quantizer (``quantize_row_q4_K_ref`` with ``make_qkx2_quants``) in numpy.

gguf 0.19's Python quantizer has Q8_0/Q4_0/Q5_0... but raises NotImplementedError for the
K-quants (its dequantizers exist). This is the reference algorithm of ggml-quants.c, vectorized
over all 32-value sub-blocks at once; the bytes are checked against gguf's own dequantizer in
tests (dequantize(ours) vs the values the algorithm chose).

A Q4_K super-block holds 256 values: fp16 ``d`` and ``dmin``, 12 bytes of packed 6-bit scales and
mins for its eight 32-value sub-blocks, and 128 bytes of 4-bit quants. A value is
``d * scale_j * q - dmin * min_j``.
"""

from __future__ import annotations

QK_K = 256
BLOCK_BYTES = 2 + 2 + 12 + QK_K // 2  # 144


def _nearest_int(x):
    import numpy as np

    return np.rint(x).astype(np.int32)  # ggml's nearest_int rounds half to even, like rint


def _make_qkx2_quants(x, weights, nmax: int = 15, rmin: float = -1.0, rdelta: float = 0.1, nstep: int = 20):
    """Vectorized make_qkx2_quants over rows of ``x`` [n, 32]: (scale [n], the_min [n], L [n, 32] uint8)."""
    import numpy as np

    f32 = np.float32
    x = x.astype(f32, copy=False)
    w = weights.astype(f32, copy=False)
    mn = np.minimum(x.min(axis=1), 0).astype(f32)
    mx = x.max(axis=1).astype(f32)
    sum_w = w.sum(axis=1, dtype=f32)
    sum_x = (w * x).sum(axis=1, dtype=f32)
    flat = mx == mn
    rng = np.where(flat, f32(1), mx - mn).astype(f32)
    iscale = (f32(nmax) / rng).astype(f32)
    scale = (f32(1) / iscale).astype(f32)
    L = np.clip(_nearest_int(iscale[:, None] * (x - mn[:, None])), 0, nmax)
    diff = scale[:, None] * L + mn[:, None] - x
    best = (w * diff * diff).sum(axis=1, dtype=f32)
    best_min = mn.copy()
    for step in range(nstep + 1):
        isc = ((f32(rmin) + f32(rdelta) * f32(step) + f32(nmax)) / rng).astype(f32)
        la = np.clip(_nearest_int(isc[:, None] * (x - mn[:, None])), 0, nmax).astype(f32)
        sum_l = (w * la).sum(axis=1, dtype=f32)
        sum_l2 = (w * la * la).sum(axis=1, dtype=f32)
        sum_xl = (w * la * x).sum(axis=1, dtype=f32)
        D = sum_w * sum_l2 - sum_l * sum_l
        ok = D > 0
        safe_D = np.where(ok, D, f32(1))
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / safe_D
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / safe_D
        pos = this_min > 0
        this_min = np.where(pos, f32(0), this_min)
        this_scale = np.where(pos, sum_xl / np.where(sum_l2 > 0, sum_l2, f32(1)), this_scale)
        d2 = this_scale[:, None] * la + this_min[:, None] - x
        mad = (w * d2 * d2).sum(axis=1, dtype=f32)
        better = ok & (mad < best)
        L = np.where(better[:, None], la.astype(np.int32), L)
        best = np.where(better, mad, best)
        scale = np.where(better, this_scale, scale).astype(f32)
        best_min = np.where(better, this_min, best_min).astype(f32)
    scale = np.where(flat, f32(0), scale)
    best_min = np.where(flat, mn, best_min)
    L = np.where(flat[:, None], 0, L)
    return scale, (-best_min).astype(f32), L.astype(np.uint8)


def quantize_q4_k(data):
    """float array [..., n] (n a multiple of 256) -> uint8 [..., n / 256 * 144] in llama.cpp's Q4_K layout."""
    import numpy as np

    f32 = np.float32
    shape = data.shape
    if shape[-1] % QK_K:
        raise ValueError(f"Q4_K needs rows that are a multiple of {QK_K} values, got {shape[-1]}")
    x = np.asarray(data, dtype=f32).reshape(-1, QK_K)
    nb = x.shape[0]
    sub = x.reshape(nb * 8, 32)
    av = np.sqrt((sub * sub).sum(axis=1, dtype=f32) / f32(32)).astype(f32)
    weights = av[:, None] + np.abs(sub)
    scales, mins, _ = _make_qkx2_quants(sub, weights)
    scales, mins = scales.reshape(nb, 8), mins.reshape(nb, 8)
    max_scale = scales.max(axis=1)
    max_min = mins.max(axis=1)
    inv_scale = np.where(max_scale > 0, f32(63) / np.where(max_scale > 0, max_scale, f32(1)), f32(0)).astype(f32)
    inv_min = np.where(max_min > 0, f32(63) / np.where(max_min > 0, max_min, f32(1)), f32(0)).astype(f32)
    ls = np.minimum(_nearest_int(inv_scale[:, None] * scales), 63).astype(np.uint8)
    lm = np.minimum(_nearest_int(inv_min[:, None] * mins), 63).astype(np.uint8)
    packed = np.zeros((nb, 12), dtype=np.uint8)
    packed[:, 0:4] = ls[:, 0:4]
    packed[:, 4:8] = lm[:, 0:4]
    packed[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    packed[:, 0:4] |= (ls[:, 4:8] >> 4) << 6
    packed[:, 4:8] |= (lm[:, 4:8] >> 4) << 6
    d16 = (max_scale / f32(63)).astype(np.float16)
    dmin16 = (max_min / f32(63)).astype(np.float16)
    # requantize every value with the rounded (fp16, 6-bit) scales, as the reference does
    d = d16.astype(f32)[:, None] * ls.astype(f32)
    dm = dmin16.astype(f32)[:, None] * lm.astype(f32)
    xs = x.reshape(nb, 8, 32)
    safe_d = np.where(d == 0, f32(1), d)
    L = np.clip(_nearest_int((xs + dm[:, :, None]) / safe_d[:, :, None]), 0, 15).astype(np.uint8)
    L = np.where((d == 0)[:, :, None], 0, L).astype(np.uint8)
    L = L.reshape(nb, 4, 2, 32)  # per 64 values: low nibble = first 32, high nibble = next 32
    qs = (L[:, :, 0, :] | (L[:, :, 1, :] << 4)).reshape(nb, 128)
    out = np.concatenate([d16.reshape(nb, 1).view(np.uint8), dmin16.reshape(nb, 1).view(np.uint8), packed, qs],
                         axis=1)
    return out.reshape(*shape[:-1], shape[-1] // QK_K * BLOCK_BYTES)
