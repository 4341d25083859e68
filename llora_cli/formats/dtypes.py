"""safetensors dtypes as numpy arrays, and exact conversions to and from fp32 (bfloat16 as raw uint16 bits).

numpy has no bfloat16; a BF16 tensor travels as its uint16 bits and is widened/rounded here, so the streaming
merge and the GGUF writer never need torch (~1.5 s to import here).
"""

from __future__ import annotations

# Tensors of the stream are numpy arrays tagged with their safetensors dtype: numpy has no bfloat16, so a
# BF16 tensor is its raw uint16 bits. numpy + OpenBLAS keeps torch (~1.5 s to import here) out of the merge.
NUMPY_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "uint16", "I64": "int64",
                "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}
FLOAT_TYPES = ("F64", "F32", "F16", "BF16")


def to_f32(src, st_dtype: str, out=None):
    """fp32 values of ``src`` (an array of ``st_dtype``), into ``out`` when given."""
    import numpy as np

    if out is None:
        out = np.empty(src.shape, dtype=np.float32)
    if st_dtype == "BF16":
        bits = out.view(np.uint32)
        bits[...] = src
        bits <<= 16  # bfloat16 is the upper half of a float32
    else:
        out[...] = src
    return out


def from_f32(x, st_dtype: str, out=None, scratch=None):
    """``x`` (fp32) rounded to ``st_dtype`` (round to nearest even, like torch), into ``out`` when given;
    ``scratch`` (uint32, x's shape) spares the bfloat16 path its temporary."""
    import numpy as np

    if st_dtype != "BF16":
        if out is None:
            return x.astype(NUMPY_DTYPES[st_dtype])
        out[...] = x
        return out
    if out is None:
        out = np.empty(x.shape, dtype=np.uint16)
    bits = x.view(np.uint32)
    rounded = np.right_shift(bits, 16, out=scratch)
    rounded &= 1
    rounded += 0x7FFF
    rounded += bits
    rounded >>= 16
    np.copyto(out, rounded, casting="unsafe")
    if x.size and np.isnan(x.max()):  # max propagates NaN: the full check runs only when there is one
        out[np.isnan(x)] = 0x7FC0  # torch's canonical bfloat16 NaN; rounding would turn some NaNs into infinities
    return out
