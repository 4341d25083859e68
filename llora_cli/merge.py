"""`llora merge`: a streaming, verified, provenance-gated merge of a training adapter into its base.

Streams the base's safetensors one tensor at a time: adapted weights are merged
in fp32 (``mergeops``) and cast to the output dtype, everything else is passed
through (cast if needed). Each merged tensor is checked on random probe vectors
against base + adapter computed without the merged weight (level 1). After the
stream, when the model fits in memory, logits of the merged model are compared
with base + adapter through PEFT on probe prompts (level 2). Only then is the
catalog changed: the merged artifact is registered and the adapter moved to
``merged`` in one transaction, then discarded unless kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from llora_cli import mergeops, modelfiles
from llora_cli.formats import dtypes, peft
from llora_cli.formats.shards import BufferPool, ShardReader, ShardWriter
from llora_cli.loading import available_memory, quantized_by_bnb, save_dequantized, stored_format
from llora_store import Store, rules
from llora_store.catalog import new_id, validate_name
from llora_store.errors import BadInput, Conflict, RuleViolation
from llora_store.models import Artifact

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
ST_OUT = {"fp32": "F32", "bf16": "BF16", "fp16": "F16"}  # --dtype -> safetensors dtype
# Level-1: the fp32 merged weight applied to probe vectors vs base + adapter computed in fp32 without
# forming the merged weight (max |diff| / max |reference|); the cast to the output dtype is checked
# separately against the unit roundoff of that dtype (see mergeops.merge_checked).
TENSOR_TOL = 1e-4
CAST_TOL = {"fp32": 1e-6, "fp16": 2.0**-11, "bf16": 2.0**-8}
# Level-2 tolerance: max |logits diff| / max |reference logits|.
LOGIT_TOL = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 5e-2}
SHARD_BYTES = 512 << 20
PROBES = ["What is the capital of France?", "def add(a, b):", "Set a timer for 5 minutes."]


@dataclass
class MergeReport:
    merged: Artifact | None
    adapter_state: str
    dtype: str
    qlora: str | None
    tensors_merged: int
    tensors_total: int
    tensor_check: dict
    full_check: dict
    naive_error: dict | None = None
    files: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "merged": {"id": self.merged.id, "name": self.merged.name, "content_hash": self.merged.content_hash}
            if self.merged else None,
            "adapter_state": self.adapter_state, "dtype": self.dtype, "qlora": self.qlora,
            "tensors_merged": self.tensors_merged, "tensors_total": self.tensors_total,
            "tensor_check": self.tensor_check, "full_check": self.full_check, "naive_error": self.naive_error,
        }


def read_adapter(adapter_dir: Path):
    """(PEFT config, {module: {"A", "B", "m"}}, {base tensor: full copy}) of a PEFT adapter directory.

    Module names are as in the base (``model.layers.0.self_attn.q_proj``); tensors are fp32 numpy arrays.
    Linear LoRA: A [r, in], B [out, r]; DoRA adds m [out]. Embedding LoRA (PEFT's ``lora_embedding_A`` [r, num],
    ``lora_embedding_B`` [dim, r], delta ``(B A)^T``) is returned in the same form with A = B_emb^T [r, dim] and
    B = A_emb^T [num, r], so every delta is ``B @ A`` on a weight laid out as the base stores it. Full copies come
    from ``modules_to_save`` (e.g. ``lm_head.weight``) and replace the base tensor. Names are read by
    ``formats.peft.parse_keys`` (saved and live-PeftModel forms). Raises ``BadInput`` for tensors it cannot place.
    """
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    reader = ShardReader(adapter_dir / "adapter_model.safetensors")
    try:
        keys = peft.parse_keys(reader.header, modules_to_save=config.get("modules_to_save") or ())
        tensors = {}
        for k in [*(key for parts in keys.lora.values() for key in parts.values()), *keys.whole.values()]:
            if reader.header[k]["dtype"] not in dtypes.FLOAT_TYPES:
                raise BadInput(f"adapter tensor {k} is {reader.header[k]['dtype']}, not a floating-point tensor")
            tensors[k] = dtypes.to_f32(reader.get_tensor(k), reader.header[k]["dtype"])
    finally:
        reader.close()
    modules: dict[str, dict] = {}
    for module, parts in keys.lora.items():
        if "emb_A" in parts:
            modules[module] = {"A": tensors[parts["emb_B"]].T.copy(), "B": tensors[parts["emb_A"]].T.copy()}
        else:
            modules[module] = {short: tensors[key] for short, key in parts.items()}
    whole = {target: tensors[key] for target, key in keys.whole.items()}
    return config, modules, whole


def _round_trip(fn, array, st_dtype: str):
    """A bitsandbytes quantize-dequantize round trip (torch) applied to a numpy weight; fp32 result."""
    import torch

    return fn(torch.from_numpy(dtypes.to_f32(array, st_dtype))).numpy()


def _probe(name: str, fan_in: int, k: int = 4):
    """``k`` random probe vectors [k, fan_in], seeded by the tensor name (reproducible checks)."""
    import numpy as np

    seed = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
    return np.random.default_rng(seed).standard_normal((k, fan_in), dtype=np.float32)


def tied_embeddings_to_untie(config: dict, base_tensors, modules: dict, whole: dict) -> tuple[str, str] | None:
    """(input embedding, output head) names when the base ties them and the adapter changes either one.

    PEFT's unmerged model then computes with two different matrices: a LoRA or a full copy on the head leaves the
    input embedding as it was, and one on ``embed_tokens`` leaves the head on the original weight (the wrapper
    replaces the module, not the tied parameter). The merged checkpoint reproduces that: the head is written as
    its own tensor and ``tie_word_embeddings`` is set to false. Raises ``BadInput`` when the tied pair cannot be
    identified.
    """
    if not config.get("tie_word_embeddings", False):
        return None
    embed = next((n for n in base_tensors if n.endswith("embed_tokens.weight")), None)
    head = "lm_head.weight"
    touched = {f"{m}.weight" for m in modules} | set(whole)
    if not touched & {head, embed}:
        return None
    if embed is None:
        raise BadInput("the base ties its input and output embeddings, the adapter changes one of them, and llora "
                       "cannot find the input embedding (a tensor named *embed_tokens.weight) to untie them")
    return embed, head


def stream_merge(base_dir: Path, adapter_dir: Path, out_dir: Path, *, dtype: str = "bf16", qlora: str | None = None,
                 naive: bool = False, progress: Callable[[int, int], None] | None = None) -> dict:
    """Write the merged checkpoint's weights into ``out_dir``; returns counts and level-1 figures.

    Peak memory: the largest tensor in its source dtype and in the output dtype (one being written in
    the background) + the adapter + one fp32 row block; source tensors are read one at a time without
    mmap and output shards are written tensor by tensor.
    """
    import numpy  # noqa: F401  (loads the BLAS library that threadpool_limits then finds)
    from threadpoolctl import threadpool_limits

    # BLAS gets one core fewer than the machine: the writer thread (write + sha256) keeps one, and idle
    # OpenBLAS threads spin instead of yielding it (6.1-6.8 s vs 7.6-10.1 s on the 1B benchmark, 2 cores)
    with threadpool_limits(limits=max(1, (os.cpu_count() or 2) - 1), user_api="blas"):
        return _stream_merge(base_dir, adapter_dir, out_dir, dtype=dtype, qlora=qlora, naive=naive, progress=progress)


def _stream_merge(base_dir: Path, adapter_dir: Path, out_dir: Path, *, dtype: str, qlora: str | None, naive: bool,
                  progress: Callable[[int, int], None] | None) -> dict:
    import numpy as np

    pool = BufferPool()
    config, modules, whole = read_adapter(adapter_dir)
    out_dtype = ST_OUT[dtype]
    shards = modelfiles.weight_files(base_dir)
    headers = [(p, modelfiles.read_safetensors_header(p)) for p in shards]
    have = {name: (path, info) for path, header in headers for name, info in header.items()}
    cls_head = classifier_head(config, whole, have)  # a classifier's head: new tensors, written after the base's
    for name, t in cls_head.items():
        have[name] = (None, modelfiles.TensorInfo("F32", tuple(t.shape)))
    untie = tied_embeddings_to_untie(modelfiles.read_config(base_dir), have, modules, whole)
    if untie:  # the output head becomes its own tensor, a copy of the input embedding before any change
        embed, head = untie
        have[head] = (have[embed][0], have[embed][1])
    missing = [m for m in modules if f"{m}.weight" not in have] + [t for t in whole if t not in have]
    if missing:
        raise BadInput(f"the adapter targets modules the base does not have: {', '.join(missing[:5])}")
    for target, t in whole.items():
        if tuple(t.shape) != tuple(have[target][1].shape):
            raise BadInput(f"the adapter's full copy of {target} is {list(t.shape)}; the base's is "
                           f"{list(have[target][1].shape)}")
    # Plan output shards from the headers so names, offsets and bytes are deterministic.
    itemsize = np.dtype(dtypes.NUMPY_DTYPES[out_dtype]).itemsize
    float_types = set(dtypes.FLOAT_TYPES)
    # (source file, output name, source name, dtype, shape, bytes)
    plan: list[list[tuple[Path, str, str, str, tuple[int, ...], int]]] = [[]]
    size = 0
    entries = [(path, name, name) for path, header in headers for name in sorted(header)
               if not (untie and name == untie[1])]  # a stored copy of a tied head is what loading ignores
    if untie:
        entries.append((have[untie[0]][0], untie[1], untie[0]))
    entries += [(None, name, name) for name in sorted(cls_head)]
    for path, name, src_name in entries:
        info = have[src_name][1]
        n = 1
        for d in info.shape:
            n *= d
        if info.dtype in float_types:
            dt, nbytes = out_dtype, n * itemsize
        else:
            dt = info.dtype
            nbytes = n * {"I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}[info.dtype]
        if plan[-1] and size + nbytes > SHARD_BYTES:
            plan.append([])
            size = 0
        plan[-1].append((path, name, src_name, dt, info.shape, nbytes))
        size += nbytes
    total = sum(len(sh) for sh in plan)
    weight_map: dict[str, str] = {}
    worst_rel, worst_cast, sum_abs, n_checked, merged, replaced, added = 0.0, 0.0, 0.0, 0, 0, 0, 0
    round_trip = mergeops.ROUND_TRIPS.get(qlora) if qlora and not naive else None
    done = 0
    writers: list[tuple[str, ShardWriter]] = []
    handle, handle_path = None, None
    try:
        for i, shard in enumerate(plan):
            fname = "model.safetensors" if len(plan) == 1 else f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors"
            writer = ShardWriter(out_dir / fname, [(name, dt, shape, nbytes) for _, name, _, dt, shape, nbytes in shard],
                                 pool)
            writers.append((fname, writer))
            try:
                for path, name, src_name, _dt, _shape, _nbytes in shard:
                    if path is None:  # the classification head: copied whole (trained in full, not LoRA)
                        writer.write(name, dtypes.from_f32(cls_head[name], out_dtype))
                        weight_map[name] = fname
                        added += 1
                        done += 1
                        if progress:
                            progress(done, total)
                        continue
                    if handle_path != path:
                        if handle is not None:
                            handle.close()
                        handle, handle_path = ShardReader(path, pool), path
                    module = name.removesuffix(".weight")
                    adapted = name.endswith(".weight") and module in modules
                    src = handle.header[src_name]
                    round_trip_this = round_trip is not None and quantized_by_bnb(name, src["shape"])
                    if name in whole and not adapted:  # a full copy (modules_to_save) replaces the base tensor
                        writer.write(name, dtypes.from_f32(whole[name], out_dtype))
                        replaced += 1
                    elif not adapted and not round_trip_this:
                        cast = out_dtype if src["dtype"] in float_types else None
                        writer.write_parts(name, handle.iter_chunks(src_name, cast))
                    else:
                        if name in whole:  # PEFT loads the saved base layer first, then adds the LoRA delta
                            t, t_dtype, round_trip_this = whole[name].copy(), "F32", False
                            replaced += 1
                        else:
                            t, t_dtype = handle.get_tensor(src_name), src["dtype"]
                        if round_trip_this:
                            # every linear weight of the decoder was quantized during QLoRA training
                            t_src, t, t_dtype = t, _round_trip(round_trip, t, t_dtype), "F32"
                            pool.give(t_src)
                        if adapted:
                            parts = modules[module]
                            scale = mergeops.lora_scale(config, module)
                            out = pool.take(t.size * itemsize).view(dtypes.NUMPY_DTYPES[out_dtype]).reshape(t.shape)
                            out, fig = mergeops.merge_checked(t, t_dtype, parts["A"], parts["B"], scale,
                                                              _probe(name, t.shape[1]), out_dtype, parts.get("m"),
                                                              out=out)
                            pool.give(t)  # the source is not needed any more; `out` goes to the writer
                            worst_rel = max(worst_rel, fig["max_diff"] / max(fig["max_ref"], 1e-12))
                            sum_abs += fig["sum_diff"] / fig["n"]
                            worst_cast = max(worst_cast, fig["cast_ratio"])
                            n_checked += 1
                            merged += 1
                            writer.write(name, out)
                            del out
                        else:
                            cast = dtypes.from_f32(t, out_dtype) if t_dtype != out_dtype else t
                            if cast is not t:
                                pool.give(t)
                            writer.write(name, cast)
                            del cast
                        del t
                    weight_map[name] = fname
                    done += 1
                    if progress:
                        progress(done, total)
            finally:
                writer.close()  # drains, fsyncs and closes in its own thread while the next shard is merged
    finally:
        if handle is not None:
            handle.close()
        errors = []
        for _, w in writers:  # every writer thread has finished (fsync included) before anything goes on
            try:
                w.wait()
            except BaseException as e:
                errors.append(e)
    if errors:
        raise errors[0]
    from llora_store.files import FileRecord

    records = [FileRecord(fname, w.sha.hexdigest(), w.bytes) for fname, w in writers]
    if merged != len(modules) or replaced != len(whole):
        raise BadInput(f"merged {merged} of {len(modules)} adapter modules and replaced {replaced} of {len(whole)} "
                       "modules_to_save copies; the adapter does not fit this base")
    if len(plan) > 1:
        index = {"metadata": {"total_size": sum(os.path.getsize(out_dir / f) for f in set(weight_map.values()))},
                 "weight_map": dict(sorted(weight_map.items()))}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    passed = worst_rel <= TENSOR_TOL and worst_cast <= CAST_TOL[dtype]
    if added != len(cls_head):
        raise BadInput(f"wrote {added} of {len(cls_head)} classification head tensors")
    return {"tensors_merged": merged, "tensors_replaced": replaced, "tensors_added": added, "tensors_total": total,
            "records": records,
            "untied": list(untie) if untie else None,
            "tensor_check": {"probe_vectors": 4, "max_rel_error": worst_rel, "mean_abs_error": sum_abs / max(n_checked, 1),
                             "tolerance": TENSOR_TOL, "cast_max_rel_error": worst_cast, "cast_tolerance": CAST_TOL[dtype],
                             "passed": passed}}


def classifier_head(config: dict, whole: dict, have: dict) -> dict:
    """The full copies of a ``SEQ_CLS`` adapter that the base does not have (its classification head, e.g.
    ``score.weight`` [num_labels, hidden]), taken out of ``whole``: the merge adds them as new tensors. {} for any
    other adapter (a full copy of a tensor the base lacks stays in ``whole`` and is refused as not fitting)."""
    from llora_cli.classify import HEAD_MODULES

    if config.get("task_type") != "SEQ_CLS":
        return {}
    return {t: whole.pop(t) for t in list(whole) if t not in have and t.split(".")[0] in HEAD_MODULES}


def classifier_config(base_dir: Path, labels: list[str]) -> dict:
    """The config keys that make a merged checkpoint load as the classifier with plain
    ``AutoModelForSequenceClassification.from_pretrained``: the sequence-classification architecture of the
    base's model type, ``id2label`` / ``label2id``, ``pad_token_id`` (the tokenizer's pad, else its EOS: what
    training used to find each row's last token), ``problem_type``."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    from llora_cli.loading import load_tokenizer

    config = modelfiles.read_config(base_dir)
    tok = load_tokenizer(base_dir)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return {"architectures": [MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES[config["model_type"]]],
            "id2label": {str(i): x for i, x in enumerate(labels)}, "label2id": {x: i for i, x in enumerate(labels)},
            "pad_token_id": pad, "problem_type": "single_label_classification"}


def copy_model_files(base_dir: Path, out_dir: Path, dtype: str, *, untied: bool = False,
                     labels: list[str] | None = None) -> None:
    """Config (with the output dtype, no quantization, ``tie_word_embeddings`` false when the merge wrote the head
    as its own tensor; a classifier's ``classifier_config`` keys when ``labels``), generation config and tokenizer,
    copied from the base; a classifier also gets ``classifier.json``."""
    config = json.loads((base_dir / "config.json").read_text())
    if untied:
        config["tie_word_embeddings"] = False
    if labels:
        from llora_cli.classify import CLASSIFIER_FILE

        config.update(classifier_config(base_dir, labels))
        (out_dir / CLASSIFIER_FILE).write_text(json.dumps({"task": "classify", "labels": list(labels)}))
    for key in ("torch_dtype", "dtype"):
        if key in config or key == "dtype":
            config[key] = DTYPES[dtype]
    config.pop("quantization_config", None)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for n in ("generation_config.json", *modelfiles.TOKENIZER_FILES):
        if (base_dir / n).is_file():
            shutil.copyfile(base_dir / n, out_dir / n)


def full_check(base_dir: Path, adapter_dir: Path, merged_dir: Path, *, dtype: str, qlora: str | None,
               labels: list[str] | None = None) -> dict:
    """Logits of the merged model vs base + adapter (PEFT) on probe prompts. A classifier (``labels``): the merged
    directory loaded with plain ``AutoModelForSequenceClassification`` (its config alone: architecture, labels,
    pad token) against the base as a sequence classifier with the PEFT adapter, head included."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from llora_cli.loading import load_model, load_tokenizer, plan_for_dir

    if labels:
        from peft import PeftModel

        tokenizer = load_tokenizer(base_dir)
        ref_model = AutoModelForSequenceClassification.from_pretrained(
            base_dir, dtype=torch.float32, **{k: v for k, v in classifier_config(base_dir, labels).items()
                                              if k != "architectures"})
        ref_model = PeftModel.from_pretrained(ref_model, adapter_dir).eval()
        merged = AutoModelForSequenceClassification.from_pretrained(merged_dir, dtype=torch.float32).eval()
    else:
        fp32 = dataclasses.replace(plan_for_dir(base_dir, adapter_dir), strategy="full", dtype="fp32", device="cpu",
                                   reason="the reference is computed in fp32")
        tokenizer, ref_model, _ = load_model(base_dir, adapter_dir, qlora, plan=fp32)
        merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    worst, mean_sum = 0.0, 0.0
    with torch.inference_mode():
        for prompt in PROBES:
            ids = tokenizer(prompt, return_tensors="pt")
            ref = ref_model(**ids).logits.float()
            got = merged(**ids).logits.float()
            diff = (got - ref).abs()
            worst = max(worst, float(diff.max() / ref.abs().max().clamp_min(1e-12)))
            mean_sum += float(diff.mean())
    tol = LOGIT_TOL[dtype]
    return {"level": "full", "prompts": len(PROBES), "max_rel_error": worst, "mean_abs_error": mean_sum / len(PROBES),
            "tolerance": tol, "passed": worst <= tol}


def merge(store: Store, ref: str, *, base_ref: str | None = None, dtype: str | None = None, name: str | None = None,
          keep_adapter: bool = False, verify: str = "full", naive_qlora: bool = False, command: str = "",
          progress: Callable[[int, int], None] | None = None) -> MergeReport:
    if dtype is not None and dtype not in DTYPES:
        raise BadInput(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if verify not in ("tensors", "full"):
        raise BadInput(f"--verify must be tensors or full, got {verify!r}")
    adapter = store.resolve(ref, kinds=("adapter", "modifier"))
    from llora_cli.classify import is_classifier, labels_of

    labels = labels_of(adapter) if is_classifier(adapter) else None
    # default: bf16; a classifier fp32 (its few logits moved 7% in bf16 on SmolLM2, refused by the R2 check)
    dtype = dtype or ("fp32" if labels else "bf16")
    with store.reading() as s:
        trained_on = store.parents_by_role(s, adapter.id, "trained_on") or store.parents_by_role(s, adapter.id, "runs_on")
    base = store.resolve(base_ref, kinds=("base", "merged", "compressed")) if base_ref else (trained_on[0] if trained_on else None)
    if base is None:
        raise RuleViolation("R3", f"adapter '{adapter.name}' ({adapter.id}) records no base it was trained on",
                            hint="name the exact base with --base")
    qlora = adapter.quantization if adapter.quantization in mergeops.ROUND_TRIPS else None
    rules.check_mergeable(adapter, base, naive_qlora=False)  # R1, R2, R3
    if naive_qlora and not qlora:
        raise BadInput("--naive-qlora is for adapters trained on a quantized base; this one was not")
    if naive_qlora and verify != "full":
        raise BadInput("--naive-qlora needs --verify full: a naive merge records its measured error (R4)")
    base_dir, adapter_dir = store.path_of(base.id), store.path_of(adapter.id)
    storage = stored_format(base_dir)
    if storage != "safetensors" and naive_qlora:
        raise BadInput(f"{base.kind} '{base.name}' stores {storage} weights: the merge always dequantizes them "
                       "(the weights the adapter trained on); --naive-qlora does not apply")
    name = validate_name(name if name is not None else store.unique_name(f"{adapter.name[:50]}-merged"))
    aid = new_id()
    staging = store.new_staging(aid)
    dequantized, provenance = None, None
    try:
        if storage != "safetensors":
            # R4: an adapter trained on a compressed base saw that base's dequantized weights; the merge adds its
            # delta to exactly those, in full precision, and never re-quantizes (qlora round trip off)
            dequantized = store.new_staging(new_id())
            provenance = save_dequantized(base_dir, dequantized)
            base_dir, qlora = dequantized, None
        result = stream_merge(base_dir, adapter_dir, staging, dtype=dtype, qlora=qlora, naive=naive_qlora, progress=progress)
        copy_model_files(base_dir, staging, dtype, untied=bool(result["untied"]), labels=labels)
        tensor_check = result["tensor_check"]
        if not tensor_check["passed"]:
            raise RuleViolation("R2", f"merged tensors differ from base + adapter by {tensor_check['max_rel_error']:.2e} "
                                      f"(relative), above the tolerance {tensor_check['tolerance']:.0e}; nothing changed",
                                hint="merge to a wider --dtype (fp32), or report the adapter")
        need = (modelfiles.summarize_model(base_dir)["num_parameters"] or 0) * 4 * 3
        if verify == "full" and need < available_memory() * 0.8:
            fc = full_check(base_dir, adapter_dir, staging, dtype=dtype, qlora=qlora, labels=labels)
        elif verify == "full":
            fc = {"level": "skipped", "reason": f"needs ~{need >> 20} MiB, {available_memory() >> 20} MiB available"}
        else:
            fc = {"level": "skipped", "reason": "--verify tensors"}
        naive_error = None
        if naive_qlora:
            if fc.get("level") != "full":
                raise RuleViolation("R4", f"a naive merge must record its measured error, but the full check was "
                                          f"skipped ({fc.get('reason')}); nothing changed",
                                    hint="merge without --naive-qlora (the quantization round trip needs no check)")
            naive_error = {k: fc.get(k) for k in ("max_rel_error", "mean_abs_error")}
        elif fc.get("level") == "full" and not fc["passed"]:
            raise RuleViolation("R2", f"merged model logits differ from base + adapter by {fc['max_rel_error']:.2e} "
                                      f"(relative), above the tolerance {fc['tolerance']:.0e}; nothing changed",
                                hint="merge to a wider --dtype (fp32)")
        meta = {"merge": {"dtype": dtype, "qlora": qlora, "qlora_merge": ("naive" if naive_qlora else "round-trip") if qlora
                          else "dequantized-base" if provenance else None,
                          "base_storage": provenance, "untied_embeddings": result["untied"],
                          "tensors_merged": result["tensors_merged"], "tensors_replaced": result["tensors_replaced"],
                          "tensors_added": result["tensors_added"],
                          "tensors_total": result["tensors_total"]},
                "verification": {"tensors": tensor_check, "full": fc, **({"naive_qlora_error": naive_error} if naive_qlora else {})},
                "architecture": modelfiles.summarize_model(staging),
                "adapter": {"id": adapter.id, "name": adapter.name, "content_hash": adapter.content_hash},
                **({"task": "classify", "labels": labels,  # the text length the head was trained to read
                    "max_seq_len": (adapter.meta.get("config") or {}).get("max_seq_len")} if labels else {})}
        merged = store.create("merged", name, staging=staging, metadata=meta, artifact_id=aid, command=command,
                              known_hashes={r.path: r for r in result["records"]},
                              parents=[(base.id, "merge_base"), (adapter.id, "adapter")],
                              reason=f"merged {adapter.name} into {base.name}", transitions=[(adapter.id, "merge")])
    except Exception:
        # Another command that changed the adapter meanwhile (the same merge run twice at once, a discard) makes this
        # one fail in whatever it was doing (its files vanish mid-read, the auto name is taken, the transition is
        # refused): say that, not the symptom.
        now = store.get(adapter.id)
        if now.state != adapter.state:
            raise Conflict(f"{adapter.kind} '{adapter.name}' ({adapter.id}) went from '{adapter.state}' to "
                           f"'{now.state}' while this merge ran (another command merged or discarded it first); "
                           "nothing was written", hint=f"see what happened: llora history {adapter.id}") from None
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if dequantized is not None:
            shutil.rmtree(dequantized, ignore_errors=True)
    if not keep_adapter:
        store.discard(adapter.id, command=command, reason=f"merged into {merged.name} ({merged.id})")
    return MergeReport(merged, store.get(adapter.id).state, dtype, qlora, result["tensors_merged"],
                       result["tensors_total"], tensor_check, fc, naive_error)

