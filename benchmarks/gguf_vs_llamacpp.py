"""Our GGUF files read by llama.cpp itself (llama-cpp-python), and our Q4_K blocks vs llama.cpp's quantizer.

Usage (needs `pip install llama-cpp-python`; run with that interpreter, llora importable):
  python benchmarks/gguf_vs_llamacpp.py --home DIR
where DIR is a store holding the gguf-f16 / gguf-q8_0 / gguf-q4_0 / gguf-q4_k compressions of one source
(e.g. the one benchmarks/compress_smollm2.py made). For each file: llama.cpp loads it, the chat answer to
"What is the capital of France?" (greedy), the tokenization of a sample vs transformers' tokenizer of the
source, and the mean next-token KL vs our f16 file over a chat prompt, computed by llama.cpp. Then
llama.cpp quantizes our f16 file to Q8_0 / Q4_0 / Q4_K_S itself (llama_model_quantize) for the same figures,
and our Q4_K quantizer is run on the same f16 values as llama.cpp's: identical 144-byte blocks are counted.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sqlite3
import tempfile
from pathlib import Path

import numpy as np

PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


def compressed_files(home: Path) -> dict[str, Path]:
    db = sqlite3.connect(home / "catalog.db")
    rows = db.execute("select id, quantization from artifact where kind='compressed' and state!='discarded'").fetchall()
    return {q: home / "artifacts" / i / "model.gguf" for i, q in rows if q and q.startswith("gguf-")}


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def main() -> None:
    from llama_cpp import Llama, llama_model_quantize, llama_model_quantize_default_params

    ap = argparse.ArgumentParser()
    ap.add_argument("--home", required=True)
    args = ap.parse_args()
    files = compressed_files(Path(args.home))
    work = Path(tempfile.mkdtemp(prefix="llama-cpp-check-"))
    for label, ftype in (("llama.cpp-q8_0", 7), ("llama.cpp-q4_0", 2), ("llama.cpp-q4_k_s", 14)):
        params = llama_model_quantize_default_params()
        params.ftype, params.nthread = ftype, os.cpu_count() or 1
        out = work / f"{label}.gguf"
        if llama_model_quantize(str(files["gguf-f16"]).encode(), str(out).encode(), ctypes.byref(params)) != 0:
            raise SystemExit(f"llama_model_quantize failed for {label}")
        files[label] = out

    def run(path: Path):
        llm = Llama(model_path=str(path), n_ctx=256, logits_all=True, verbose=False, seed=0)
        toks = llm.tokenize(PROMPT.encode(), add_bos=False, special=True)
        llm.eval(toks)
        scores = np.array(llm.scores[: len(toks)], dtype=np.float64)
        llm.reset()
        answer = llm.create_chat_completion(messages=[{"role": "user", "content": "What is the capital of France?"}],
                                            max_tokens=16, temperature=0.0)["choices"][0]["message"]["content"]
        return llm, scores, answer

    _, ref, _ = run(files["gguf-f16"])
    for label, path in files.items():
        llm, scores, answer = run(path)
        kl = (np.exp(log_softmax(ref)) * (log_softmax(ref) - log_softmax(scores))).sum(-1)
        print(json.dumps({"file": label, "bytes": path.stat().st_size, "answer": answer,
                          "tokens_of_sample": llm.tokenize(b"Hello world 12345", add_bos=False),
                          "mean_kl_vs_our_f16": round(float(kl.mean()), 5)}), flush=True)

    import gguf

    from llora_cli.kquants import quantize_q4_k

    f16 = {t.name: t for t in gguf.GGUFReader(files["gguf-f16"]).tensors}
    same = total = 0
    for t in gguf.GGUFReader(files["llama.cpp-q4_k_s"]).tensors:
        if t.tensor_type.name != "Q4_K":
            continue
        ours = quantize_q4_k(np.asarray(f16[t.name].data).astype(np.float32)).view(np.uint8).reshape(-1, 144)
        theirs = np.asarray(t.data).view(np.uint8).reshape(-1, 144)
        eq = (ours == theirs).all(axis=1)
        same, total = same + int(eq.sum()), total + eq.size
    print(json.dumps({"q4_k_blocks_identical_to_llama_cpp": same, "q4_k_blocks": total,
                      "fraction": round(same / total, 5) if total else None}))


if __name__ == "__main__":
    main()
