"""The router encoder's BERT layers as an ONNX graph, for ONNX Runtime (``encoder.Encoder``, backend onnxruntime).

The graph computes what ``encoder.bert_forward`` computes after the embeddings, in float32, op for op: per layer
a fused QKV MatMul + bias, scaled dot-product attention with an additive key mask and Softmax, the output
projection, residual + LayerNormalization, the intermediate MatMul with the exact (erf) GELU, the output MatMul,
residual + LayerNormalization. Inputs: ``x`` ``[n, T, h]`` float32 (token + position + type embeddings after their
LayerNorm, computed in numpy) and ``mask_bias`` ``[n, 1, 1, T]`` float32 (0 for a token, -1e9 for padding); output
``hidden`` ``[n, T, h]``. Opset 17 (LayerNormalization is an ONNX op from 17 on). ONNX Runtime then fuses what it
can (GELU, skip + LayerNorm) at ``ORT_ENABLE_ALL``. Measured against the numpy forward: max difference 1.8e-7 over
120 prompts (``benchmarks/router_encoder_onnx.py``); a routed query at batch 1 on one thread 9.4 ms vs 14.1 ms median
(``benchmarks/router_overhead.py``; docs/benchmarks.md, "The encoder on ONNX Runtime").

Building needs the ``onnx`` package (about 1 s to import); the serialized graph is cached on disk
(``encoder.onnx_cache_path``, keyed by the weights and this file's source), so a process that finds it needs only
``onnxruntime``.
"""

from __future__ import annotations


def build(layers: list[dict], config: dict) -> bytes:
    """The serialized ONNX model (``ModelProto`` bytes) of the BERT layers ``layers`` (``encoder.bert_params``: per
    layer ``qkv_w`` ``[h, 3h]``, ``o_w`` ``[h, h]``, ``i_w`` ``[h, i]``, ``f_w`` ``[i, h]`` float32 and their biases
    and LayerNorm weights) with ``config``'s ``hidden_size``, ``num_attention_heads`` and ``layer_norm_eps``.
    ImportError when ``onnx`` is not installed."""
    import numpy as np
    import onnx
    from onnx import TensorProto, numpy_helper
    from onnx import helper as H

    h, heads, eps = config["hidden_size"], config["num_attention_heads"], float(config["layer_norm_eps"])
    d = h // heads
    inits, nodes, count = [], [], [0]

    def const(name: str, arr) -> str:
        arr = np.asarray(arr)  # (np.ascontiguousarray would make a scalar 1-d)
        inits.append(numpy_helper.from_array(arr if arr.flags.c_contiguous else arr.copy(order="C"), name))
        return name

    def node(op: str, inputs: list[str], **attrs) -> str:
        count[0] += 1
        out = f"t{count[0]}"
        nodes.append(H.make_node(op, inputs, [out], **attrs))
        return out

    const("shape_qkv", np.array([0, 0, 3, heads, d], np.int64))
    const("shape_h", np.array([0, 0, h], np.int64))
    const("scale", np.array(1.0 / np.sqrt(d), np.float32))
    const("half", np.array(0.5, np.float32))
    const("one", np.array(1.0, np.float32))
    const("inv_sqrt2", np.array(0.7071067811865476, np.float32))
    for j in range(3):
        const(f"index{j}", np.array(j, np.int64))
    x = "x"
    for i, layer in enumerate(layers):
        def p(key: str, i=i, layer=layer) -> str:
            return const(f"l{i}_{key}", np.asarray(layer[key], dtype=np.float32))

        qkv = node("Add", [node("MatMul", [x, p("qkv_w")]), p("qkv_b")])
        qkv = node("Transpose", [node("Reshape", [qkv, "shape_qkv"])], perm=[2, 0, 3, 1, 4])  # 3, n, H, T, d
        q, k, v = (node("Gather", [qkv, f"index{j}"], axis=0) for j in range(3))
        scores = node("MatMul", [node("Mul", [q, "scale"]), node("Transpose", [k], perm=[0, 1, 3, 2])])
        probs = node("Softmax", [node("Add", [scores, "mask_bias"])], axis=-1)
        a = node("Reshape", [node("Transpose", [node("MatMul", [probs, v])], perm=[0, 2, 1, 3]), "shape_h"])
        o = node("Add", [node("Add", [node("MatMul", [a, p("o_w")]), p("o_b")]), x])
        x1 = node("LayerNormalization", [o, p("ln1_w"), p("ln1_b")], axis=-1, epsilon=eps)
        y = node("Add", [node("MatMul", [x1, p("i_w")]), p("i_b")])
        erf = node("Erf", [node("Mul", [y, "inv_sqrt2"])])
        g = node("Mul", [node("Mul", [y, "half"]), node("Add", [erf, "one"])])
        f = node("Add", [node("Add", [node("MatMul", [g, p("f_w")]), p("f_b")]), x1])
        x = node("LayerNormalization", [f, p("ln2_w"), p("ln2_b")], axis=-1, epsilon=eps)
    nodes.append(H.make_node("Identity", [x], ["hidden"]))
    graph = H.make_graph(nodes, "all-MiniLM-L6-v2",
                         [H.make_tensor_value_info("x", TensorProto.FLOAT, [None, None, h]),
                          H.make_tensor_value_info("mask_bias", TensorProto.FLOAT, [None, 1, 1, None])],
                         [H.make_tensor_value_info("hidden", TensorProto.FLOAT, [None, None, h])], inits)
    model = H.make_model(graph, opset_imports=[H.make_opsetid("", 17)], producer_name="llora")
    model.ir_version = 8  # readable by ONNX Runtime >= 1.14
    onnx.checker.check_model(model)
    return model.SerializeToString()
