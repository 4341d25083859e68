"""Could ONNX Runtime bring the router's encoder under 10 ms per query (issue 13)? A measurement, not a feature.

Usage: python benchmarks/router_encoder_onnx.py [--per-domain 40] [--rounds 3] [--out DIR]
(``onnx`` and ``onnxruntime`` are llora dependencies since this measurement.)

The same all-MiniLM-L6-v2 weights llora's router uses (``llora_cli.router.encoder``) are written as an ONNX graph
by ``llora_cli.router.onnxgraph.build`` (opset 17: MatMul/Add, Softmax attention, LayerNormalization, erf GELU); the
embedding lookup, the attention mask and the mean pooling stay in numpy as in llora. Variants, each at batch 1, one thread:

- ``numpy``: llora's encoder as shipped (numpy forward, one BLAS thread);
- ``ort-fp32``: the graph in ONNX Runtime, ``ORT_ENABLE_ALL``;
- ``ort-fp32-fused``: the graph after ``onnxruntime.transformers.optimizer.optimize_model(model_type="bert")``;
- ``ort-int8``: ``onnxruntime.quantization.quantize_dynamic`` (int8 weights per channel, int8 activations per
  tensor, computed per call): other embeddings than the router was fitted on.

Prompts: held-out prompts of the three generated tasks (the generators' test split, seed 1). Per variant: median,
p90 and minimum wall ms per query over ``--rounds`` passes, and the largest difference and smallest cosine of its
embeddings against llora's numpy encoder.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-domain", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="where the .onnx files go (default: a temporary dir)")
    args = ap.parse_args()

    import numpy as np
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    from llora_cli import tasks
    from llora_cli.router import encoder as E
    from llora_cli.router import onnxgraph

    out = args.out or Path(tempfile.mkdtemp(prefix="llora-onnx-"))
    out.mkdir(parents=True, exist_ok=True)
    enc = E.Encoder.load("numpy")  # the reference: llora's numpy forward
    cfg = enc.config
    fp32, fused, int8 = out / "minilm.onnx", out / "minilm_fused.onnx", out / "minilm_int8.onnx"
    fp32.write_bytes(onnxgraph.build(enc.layers, cfg))
    optimize_model(str(fp32), model_type="bert", num_heads=cfg["num_attention_heads"],
                   hidden_size=cfg["hidden_size"], opt_level=1).save_model_to_file(str(fused))
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True)

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sessions = {name: ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
                for name, path in (("ort-fp32", fp32), ("ort-fp32-fused", fused), ("ort-int8", int8))}
    # the same Encoder (tokenizer, embeddings, pooling) with each session in place of the numpy forward
    encoders = {"numpy": enc, **{name: dataclasses.replace(enc, session=sess) for name, sess in sessions.items()}}

    prompts = [tasks.prompt_of(r) for d in ("automation", "reasoning", "code")
               for r in tasks.make(d, 0, seed=1, n_test=args.per_domain).test]
    lengths = [len(enc.token_ids([p])[0][0]) for p in prompts]
    reference = enc.encode(prompts)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"onnxruntime {ort.__version__}; load average before {os.getloadavg()[0]:.2f}")
    print(f"{len(prompts)} prompts, tokens median {int(np.median(lengths))}, max {max(lengths)}; {args.rounds} rounds")
    print("| encoder | wall ms median | p90 | min | max abs diff vs numpy | min cosine vs numpy |")
    print("|---|---|---|---|---|---|")
    for name, encoder in encoders.items():
        def embed(p, encoder=encoder):
            return encoder.encode([p])[0]

        for p in prompts[:5]:  # warm-up
            embed(p)
        times, first = [], []
        for r in range(args.rounds):
            for p in prompts:
                t0 = time.perf_counter()
                e = embed(p)
                times.append((time.perf_counter() - t0) * 1000)
                if r == 0:
                    first.append(e)
        got = np.array(first)
        print(f"| {name} | {np.median(times):.2f} | {np.percentile(times, 90):.2f} | {min(times):.2f} | "
              f"{np.abs(got - reference).max():.1e} | {(got * reference).sum(1).min():.4f} |", flush=True)
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
