"""`llora compress`: a base or merged checkpoint to a quantized base, with its quality measured.

Methods: ``nf4`` / ``int8`` (bitsandbytes through transformers, saved pre-quantized so a reload gives
the same weights) and ``gguf-f16`` / ``gguf-q8_0`` / ``gguf-q4_0`` / ``gguf-q4_k`` (``ggufwrite``).
The result is a ``compressed`` artifact (parent role ``compressed_from``) whose metadata holds the
size, the ratio to the source in bf16 and the quality figures measured at compress time on a fixed
held-out set (``measure_quality``). Nothing is registered if any step fails.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llora_cli import modelfiles
from llora_cli.ggufwrite import GGUF_NAME
from llora_cli.ggufwrite import METHODS as GGUF_METHODS
from llora_store import Store
from llora_store.catalog import new_id, validate_name
from llora_store.errors import BadInput
from llora_store.models import Artifact

BNB_METHODS = ("nf4", "int8")
METHODS = (*BNB_METHODS, *GGUF_METHODS)
QUALITY_TASKS = ("reasoning", "automation", "code")
QUALITY_SEED = 7  # the held-out rows are fixed: same seed, same rows, for every compression
PPL_ROWS = 16
KL_PROMPTS = ["The capital of France is", "def fibonacci(n):", "Set a timer for 5 minutes and then",
              "Tom has 3 apples and buys 4 more. How many"]


@dataclass
class CompressReport:
    compressed: Artifact
    source: Artifact
    method: str
    bytes: int
    ratio: float
    quality: dict
    seconds: float

    def to_json(self) -> dict:
        return {"compressed": {"id": self.compressed.id, "name": self.compressed.name,
                               "content_hash": self.compressed.content_hash},
                "source": {"id": self.source.id, "name": self.source.name}, "method": self.method,
                "bytes": self.bytes, "ratio_vs_bf16": self.ratio, "quality": self.quality, "seconds": self.seconds}


def check_source(art: Artifact) -> None:
    if art.kind == "adapter":
        raise BadInput(f"'{art.name}' is a training adapter: adapters are merged first, then the merged checkpoint "
                       "is compressed", hint=f"llora merge {art.name}")
    if art.kind == "modifier":
        raise BadInput(f"'{art.name}' is a runtime modifier: modifiers are never compressed; they run on a "
                       "compressed base and are trained on it")
    if art.kind not in ("base", "merged"):
        raise BadInput(f"cannot compress {art.kind} '{art.name}': compress a base or a merged checkpoint")
    from llora_cli.classify import refuse_classifier

    refuse_classifier(art, "llora compress", "its compressed copy would lose the head and label map")
    if art.state == "discarded":
        raise BadInput(f"{art.kind} '{art.name}' is discarded; its weights are gone")


BNB_MIN_ROW = 64  # bitsandbytes' CPU 4-bit kernels fail on weight rows shorter than one 64-value block


def bnb_skipped(source_dir: Path, method: str) -> tuple[list[str], int]:
    """(decoder linear modules bitsandbytes cannot quantize with ``method`` on this machine, count of all of them).

    nf4: a weight whose rows (in_features) are shorter than ``BNB_MIN_ROW`` values; such layers stay in 16 bits,
    as bitsandbytes' own skip-modules option keeps a layer (``llm_int8_skip_modules``). From safetensors headers.
    """
    from llora_cli.loading import quantized_by_bnb

    linear = {n.removesuffix(".weight"): t.shape for n, t in modelfiles.model_tensors(source_dir).items()
              if quantized_by_bnb(n, t.shape)}
    if method != "nf4":
        return [], len(linear)
    return sorted(m for m, shape in linear.items() if shape[1] < BNB_MIN_ROW), len(linear)


def write_bnb(source_dir: Path, out_dir: Path, method: str) -> list[str]:
    """Quantize with bitsandbytes while loading (tensor by tensor) and save pre-quantized; returns the decoder
    linear modules left unquantized (``bnb_skipped``). Raises ``BadInput`` when no layer can be quantized."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    skipped, total = bnb_skipped(source_dir, method)
    if total and len(skipped) == total:
        raise BadInput(f"no linear layer of this model can be quantized to {method} here: every weight row is "
                       f"shorter than {BNB_MIN_ROW} values (bitsandbytes' CPU 4-bit kernels need a full block)",
                       hint="use --method int8 or a GGUF method (gguf-q8_0)")
    skip = ["lm_head", *skipped]  # lm_head: what transformers leaves in full precision by default
    quant = (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32,
                                llm_int8_skip_modules=skip)
             if method == "nf4" else BitsAndBytesConfig(load_in_8bit=True))
    # what bitsandbytes leaves unquantized (embeddings, norms, head) is stored in 16 bits (fp16 if the source
    # is fp16, else bf16), like a GGUF file quantizes its embedding: in fp32, SmolLM2's 28M-parameter
    # embedding alone is 113 MB, more than its quantized layers. The measured quality includes this cast.
    config = modelfiles.read_config(source_dir)
    dtype = torch.float16 if (config.get("dtype") or config.get("torch_dtype")) == "float16" else torch.bfloat16
    # quantize from full precision, then narrow only the plain (unquantized) parameters
    model = AutoModelForCausalLM.from_pretrained(source_dir, quantization_config=quant, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            if type(p) is torch.nn.Parameter and p.dtype == torch.float32:
                p.data = p.data.to(dtype)
    model.save_pretrained(out_dir)
    for n in ("generation_config.json", *modelfiles.TOKENIZER_FILES):
        if (source_dir / n).is_file() and not (out_dir / n).exists():
            shutil.copyfile(source_dir / n, out_dir / n)
    return skipped


ZSTD_LEVEL = 10
ZSTD_MIN_SAVING = 0.02  # keep the packed copy only if it saves at least 2%


def zstd_pack(staging: Path) -> dict:
    """zstd-pack every weight file of ``staging`` (streamed, bounded memory); a packed copy is kept
    (``NAME.zst``) only where it saves at least ``ZSTD_MIN_SAVING`` of the file. Returns the figures."""
    import zstandard

    files = [p for p in sorted(staging.iterdir()) if p.suffix in (".gguf", ".safetensors")]
    total_in = total_out = 0
    kept = []
    for p in files:
        dst = p.with_name(p.name + ".zst")
        cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=-1)
        with open(p, "rb") as src, open(dst, "wb") as out:
            cctx.copy_stream(src, out, size=p.stat().st_size)
        size_in, size_out = p.stat().st_size, dst.stat().st_size
        total_in += size_in
        if size_out <= size_in * (1 - ZSTD_MIN_SAVING):
            kept.append(dst.name)
            total_out += size_out
        else:
            dst.unlink()
            total_out += size_in
    return {"level": ZSTD_LEVEL, "bytes_in": total_in, "bytes_packed": total_out,
            "ratio": round(total_out / total_in, 4) if total_in else None, "kept": kept,
            "note": "kept" if kept else f"not kept: saves less than {ZSTD_MIN_SAVING:.0%} on this quantized data"}


def _mean_kl(tok, src, cmp) -> float:
    import torch

    total, count = 0.0, 0
    with torch.inference_mode():
        for prompt in KL_PROMPTS:
            ids = tok(prompt, return_tensors="pt")
            p = torch.log_softmax(src(**ids).logits.float(), dim=-1)
            q = torch.log_softmax(cmp(**ids).logits.float(), dim=-1)
            # KL(source || compressed) per position; >= 0 in exact arithmetic, so a float rounding below 0 is 0
            kl = (p.exp() * (p - q)).sum(-1).clamp_min(0)
            total += float(kl.sum())
            count += kl.numel()
    return total / count


def measure_quality(source_dir: Path, compressed_dir: Path, *, eval_n: int = 16, cache: Path | None = None) -> dict:
    """Perplexity (held-out instruct rows), mean next-token KL on probe prompts, and checker accuracy on
    the held-out splits of reasoning / automation / code, for the source and the compressed model.

    The source's figures are deterministic (greedy decoding, fixed rows) and cost as much as the
    compressed model's: with ``cache`` (a JSON file keyed by the source's content hash and the
    settings) a second compression of the same source reuses them.
    """
    from llora_cli import tasks
    from llora_cli.checkers import answer_done
    from llora_cli.evaluate import MAX_NEW_TOKENS, generate_batch, mean_loss
    from llora_cli.loading import load_model

    cached = json.loads(cache.read_text()) if cache is not None and cache.is_file() else {}
    t0 = time.perf_counter()
    tok, src, _ = load_model(source_dir)
    _, cmp, plan = load_model(compressed_dir)
    t1 = time.perf_counter()
    text_rows = tasks.make("instruct", 0, seed=QUALITY_SEED, n_test=PPL_ROWS).test
    loss_src = cached["loss"] if "loss" in cached else mean_loss(tok, src, text_rows)
    loss_cmp = mean_loss(tok, cmp, text_rows)
    quality = {
        "heldout": {"perplexity_rows": len(text_rows), "kl_prompts": len(KL_PROMPTS), "task_rows": eval_n,
                    "seed": QUALITY_SEED},
        "load": {"strategy": plan.strategy, "dtype": plan.dtype},
        "perplexity": {"source": round(math.exp(loss_src), 4), "compressed": round(math.exp(loss_cmp), 4)},
        "kl_mean": _mean_kl(tok, src, cmp),
        "accuracy": {},
    }
    ppl = quality["perplexity"]
    ppl["delta_pct"] = round(100 * (ppl["compressed"] / ppl["source"] - 1), 3)
    t2 = time.perf_counter()
    for task in QUALITY_TASKS if eval_n > 0 else ():
        rows = tasks.make(task, 0, seed=QUALITY_SEED, n_test=eval_n).test
        check = tasks.checker(task)
        acc = {}
        for label, model in (("source", src), ("compressed", cmp)):
            if label == "source" and task in cached.get("accuracy", {}):
                acc[label] = cached["accuracy"][task]
                continue
            outs = generate_batch(tok, model, rows, max_new_tokens=MAX_NEW_TOKENS.get(task, 64),
                                  done=answer_done(task))
            acc[label] = round(sum(check(r, o) for r, o in zip(rows, outs)) / len(rows), 4)
        acc["delta"] = round(acc["compressed"] - acc["source"], 4)
        quality["accuracy"][task] = acc
    quality["seconds"] = {"load": round(t1 - t0, 2), "perplexity_kl": round(t2 - t1, 2),
                          "accuracy": round(time.perf_counter() - t2, 2)}
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        from llora_store.files import write_json_atomic

        write_json_atomic(cache, {"loss": loss_src,
                                  "accuracy": {t: a["source"] for t, a in quality["accuracy"].items()}})
    return quality


def compress(store: Store, ref: str, method: str, *, name: str | None = None, eval_n: int = 16, zstd: bool = False,
             command: str = "", progress: Callable[[int, int], None] | None = None) -> CompressReport:
    if method not in METHODS:
        raise BadInput(f"unknown compression method {method!r}; choose one of {', '.join(METHODS)}")
    if eval_n < 0:
        raise BadInput("--eval-n must be 0 (skip task accuracy) or more")
    source = store.resolve(ref)
    check_source(source)
    source_dir = store.path_of(source.id)
    name = validate_name(name if name is not None else store.unique_name(f"{source.name[:48]}-{method}"))
    start = time.perf_counter()
    aid = new_id()
    staging = store.new_staging(aid)
    try:
        if method in GGUF_METHODS:
            from llora_cli.ggufwrite import write_gguf

            report = write_gguf(source_dir, staging / GGUF_NAME, method, name=name, progress=progress)
            detail = {"ggml_types": report.types, "fallbacks": report.fallbacks[:50],
                      "fallback_count": len(report.fallbacks)}
        else:
            skipped = write_bnb(source_dir, staging, method)
            detail = {"bnb": json.loads((staging / "config.json").read_text()).get("quantization_config"),
                      "unquantized_modules": skipped,
                      **({"unquantized_reason": f"rows shorter than {BNB_MIN_ROW} values (bitsandbytes' CPU "
                                                "4-bit kernels)"} if skipped else {})}
        size = sum(p.stat().st_size for p in staging.iterdir() if p.is_file() and p.name != ".owner")
        if zstd:
            detail["zstd"] = zstd_pack(staging)
        params = modelfiles.summarize_model(source_dir).get("num_parameters") or 0
        ratio = round(size / (params * 2), 4) if params else None
        compress_seconds = round(time.perf_counter() - start, 2)
        key = f"{source.content_hash}-s{QUALITY_SEED}-p{PPL_ROWS}-n{eval_n}"
        quality = measure_quality(source_dir, staging, eval_n=eval_n,
                                  cache=store.home / "cache" / "quality" / f"{key}.json")
        meta = {"compression": {"method": method, "bytes": size, "source_bf16_bytes": params * 2,
                                "ratio_vs_bf16": ratio, "seconds": compress_seconds, **detail},
                "quality": quality,
                "architecture": modelfiles.summarize_model(source_dir),
                "source": {"id": source.id, "name": source.name, "content_hash": source.content_hash}}
        art = store.create("compressed", name, staging=staging, metadata=meta, artifact_id=aid, command=command,
                           quantization=method, parents=[(source.id, "compressed_from")],
                           reason=f"compressed {source.name} with {method}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return CompressReport(art, source, method, size, ratio, quality, round(time.perf_counter() - start, 2))
