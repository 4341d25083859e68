"""The model loading layer: device, dtype and strategy chosen from the artifact and the machine.

``plan_for`` answers without loading anything (safetensors headers + /proc/meminfo):
the memory of loading (fp32 / bf16 / nf4), of a streaming merge and of a streaming
compression, and the strategy a load would use: ``full`` (fits in fp32 on CPU or
bf16 on an accelerator), ``full-bf16``, ``quantized-nf4``, or ``offload``
(accelerate ``device_map="auto"`` with disk offload). ``load_causal_lm`` applies it.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from llora_cli import modelfiles
from llora_store import Store
from llora_store.errors import Corrupt


def available_memory() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


RUNTIME_OVERHEAD = 400 << 20  # torch + transformers + activations for short prompts, measured order of magnitude


@dataclass(frozen=True)
class LoadPlan:
    artifact: dict
    parameters: int
    device: str
    available_bytes: int
    load_bytes: dict[str, int]
    merge_peak_bytes: int | None
    compress_peak_bytes: int
    strategy: str
    dtype: str
    reason: str

    def to_json(self) -> dict:
        return asdict(self)


def detect_device() -> str:
    """CUDA, then MPS, then CPU; torch is imported only if an accelerator may exist."""
    if shutil.which("nvidia-smi") or Path("/System/Library").exists():
        import torch

        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
    return "cpu"


def _model_dir(store: Store, ref: str):
    art = store.resolve(ref)
    if art.kind in ("adapter", "modifier"):
        role = "runs_on" if art.kind == "modifier" else "trained_on"
        with store.reading() as s:
            parents = store.parents_by_role(s, art.id, role)
        return art, store.path_of(parents[0].id), store.path_of(art.id)
    return art, store.path_of(art.id), None


def plan_for(store: Store, ref: str, *, available: int | None = None, device: str | None = None) -> LoadPlan:
    art, base_dir, adapter_dir = _model_dir(store, ref)
    return plan_for_dir(base_dir, adapter_dir, {"id": art.id, "name": art.name, "kind": art.kind},
                        available=available, device=device)


def plan_for_dir(base_dir: Path, adapter_dir: Path | None = None, artifact: dict | None = None, *,
                 available: int | None = None, device: str | None = None) -> LoadPlan:
    """The plan for a model directory (plus an optional adapter directory), from headers and /proc/meminfo."""
    stored = stored_format(base_dir)
    sizes = []
    for t in modelfiles.model_tensors(base_dir).values():
        n = 1
        for d in t.shape:
            n *= d
        sizes.append(n)
    params = sum(sizes)
    largest = max(sizes) if sizes else 0
    adapter_bytes = 0
    if adapter_dir is not None and (adapter_dir / "adapter_model.safetensors").exists():
        adapter_bytes = (adapter_dir / "adapter_model.safetensors").stat().st_size
    artifact = artifact or {"id": None, "name": base_dir.name, "kind": "adapter" if adapter_dir else "base"}
    load = {"fp32": params * 4 + adapter_bytes * 2 + RUNTIME_OVERHEAD,
            "bf16": params * 2 + adapter_bytes * 2 + RUNTIME_OVERHEAD,
            "nf4": int(params * 0.56) + adapter_bytes * 2 + RUNTIME_OVERHEAD}
    merge_peak = largest * 4 * 3 + adapter_bytes + RUNTIME_OVERHEAD if artifact["kind"] == "adapter" else None
    compress_peak = largest * 4 * 2 + RUNTIME_OVERHEAD
    available = available_memory() if available is None else available
    device = device or detect_device()
    budget = int(available * 0.8)
    if stored == "gguf":
        # transformers' GGUF loader dequantizes every tensor: the model runs in fp32 (what llama.cpp computes
        # with is the same dequantized values; it just never materializes them)
        strategy, dtype, why = "gguf-dequantized", "fp32", "GGUF weights, dequantized to fp32 on load"
        if load["fp32"] > budget:
            why += " (needs more memory than is available)"
    elif stored in ("nf4", "int8"):
        strategy, dtype, why = f"stored-{stored}", stored, f"pre-quantized bitsandbytes {stored} weights, loaded as stored"
    elif device == "cpu" and load["fp32"] <= budget:
        strategy, dtype, why = "full", "fp32", "fits in fp32 (CPU matmuls are fastest and exact in fp32)"
    elif load["bf16"] <= budget:
        strategy, dtype, why = ("full" if device != "cpu" else "full-bf16"), "bf16", "fits in bf16"
    elif load["nf4"] <= budget:
        strategy, dtype, why = "quantized-nf4", "nf4", "only an NF4 copy fits in memory"
    else:
        strategy, dtype, why = "offload", "bf16", "does not fit even in NF4: layers are offloaded to disk"
    return LoadPlan(artifact, params, device, available, load, merge_peak, compress_peak, strategy, dtype, why)


GGUF_NAME = modelfiles.GGUF_NAME


def stored_format(model_dir: Path) -> str:
    """How a model directory stores its weights: ``gguf``, ``nf4`` / ``int8`` (pre-quantized bitsandbytes)
    or ``safetensors``."""
    if (model_dir / GGUF_NAME).is_file():
        return "gguf"
    config_path = model_dir / "config.json"
    if config_path.is_file():
        import json

        q = json.loads(config_path.read_text()).get("quantization_config") or {}
        if q.get("quant_method") == "bitsandbytes":
            return "nf4" if q.get("load_in_4bit") else "int8"
    return "safetensors"


def load_tokenizer(model_dir: Path):
    """transformers' tokenizer of a model directory. A GGUF artifact's comes from its tokenizer files when they
    were written (``derived/tokenizer/``, tokenizer.py: the one the llama.cpp engine reads), else from the GGUF."""
    from llora_cli.quiet import quiet_libraries
    from llora_cli.tokenizer import DIR

    quiet_libraries()
    from transformers import AutoTokenizer

    if (model_dir / DIR / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(model_dir / DIR)
    if stored_format(model_dir) == "gguf":
        with modelfiles.parse_gguf_once():  # transformers reads the file for the config and the tokenizer
            return AutoTokenizer.from_pretrained(model_dir, gguf_file=GGUF_NAME)
    return AutoTokenizer.from_pretrained(model_dir)


_dequantized: dict | None = None  # inside reuse_dequantized(): the last GGUF file's dequantized tensors


@contextmanager
def reuse_dequantized():
    """Within the block, a GGUF file is dequantized once: later loads of the same file copy the tensors kept from
    the first (transformers' GGUF loader dequantizes every tensor again on each load). Memory: one model's
    fp32 tensors are held until the block ends. The demo loads its compressed base four times (quality
    measurement, two modifiers' training, their evaluations). The file's metadata is parsed once as well
    (``modelfiles.parse_gguf_once``).
    """
    global _dequantized
    outer, _dequantized = _dequantized, {}
    try:
        with modelfiles.parse_gguf_once():
            yield
    finally:
        _dequantized = outer


def _file_identity(path: Path) -> tuple:
    # the same file, unchanged: compress measures a GGUF file in its staging directory, and publishing renames that
    # directory, which keeps the inode, size and modification time
    st = path.stat()
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def load_gguf_dequantized(model_dir: Path, dtype):
    """The GGUF model with its dequantized weights as a plain transformers model.

    transformers marks a GGUF-loaded model as quantized (its Trainer refuses to train it, and
    ``save_pretrained`` refuses to save it), although the weights are ordinary dequantized tensors. They
    are copied into a model built from the same config without ``quantization_config``.
    """
    import copy

    from transformers import AutoModelForCausalLM

    key = (_file_identity(Path(model_dir) / GGUF_NAME), str(dtype))
    if _dequantized is not None and _dequantized.get("key") == key:
        config, state = copy.deepcopy(_dequantized["config"]), _dequantized["state"]
    else:
        with modelfiles.parse_gguf_once():  # transformers reads the file for the config and the weights
            loaded = AutoModelForCausalLM.from_pretrained(model_dir, gguf_file=GGUF_NAME, dtype=dtype)
        config, state = loaded.config, loaded.state_dict()
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        if _dequantized is not None:
            _dequantized.clear()
            _dequantized.update(key=key, config=copy.deepcopy(config), state=state)
    plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = plain.load_state_dict(state, strict=False)  # copies: the kept tensors stay as loaded
    missing = [m for m in missing if not (m == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise Corrupt(f"{model_dir / GGUF_NAME}: weights do not fit the architecture (missing {missing[:3]}, "
                      f"unexpected {unexpected[:3]})")
    if config.tie_word_embeddings:
        plain.tie_weights()
    return plain


def save_dequantized(model_dir: Path, out_dir: Path) -> dict:
    """Write the weights a model directory stores quantized (GGUF, bitsandbytes nf4/int8) as a plain fp32
    safetensors checkpoint (config without ``quantization_config``, tokenizer files) in ``out_dir``.

    These are the weights a LoRA trained on that compressed base computed with: the loading layer trains on
    GGUF as ``load_gguf_dequantized`` gives it, and bitsandbytes' CPU kernels compute ``x @ dequantize(W)^T``.
    Dequantized by the libraries themselves (transformers' GGUF loader; bitsandbytes through transformers'
    ``PreTrainedModel.dequantize``). Memory: the model in fp32. Returns provenance (storage, how).
    """
    import torch
    from transformers import AutoModelForCausalLM

    storage = stored_format(model_dir)
    if storage == "gguf":
        model, how = load_gguf_dequantized(model_dir, torch.float32), "transformers GGUF loader (gguf dequantize)"
    elif storage in ("nf4", "int8"):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        model = model.dequantize()
        how = "bitsandbytes dequantize through transformers' PreTrainedModel.dequantize"
    else:
        raise ValueError(f"{model_dir} stores plain weights; nothing to dequantize")
    model = model.float()  # bitsandbytes dirs keep embeddings/norms in 16 bits: widened exactly
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model.save_pretrained(out_dir, safe_serialization=True)
    load_tokenizer(model_dir).save_pretrained(out_dir)
    return {"storage": storage, "dequantized_by": how, "dtype": "fp32"}


def keep_bnb_4bit_unpacked(model):
    """Turn off bitsandbytes' CPU repacking of 4-bit weights on every ``Linear4bit`` of ``model`` (in place; returns
    it). Since bitsandbytes 0.49, on a CPU with AVX512-BF16, the first forward in eval mode without gradients repacks
    a layer's NF4 weight for a bf16 kernel and narrows its absmax to bf16 (``_convert_weight_packed_for_cpu``). It
    fails outright on layers whose rows are shorter than one 64-value block (``RuntimeError: shape '[32, 0]' is
    invalid``, a held-out evaluation during QLoRA training of a small model), and elsewhere computes with other
    weights than training mode, the QLoRA merge's NF4 round trip (``mergeops``) and CPUs without AVX512-BF16 do.
    Unpacked, every machine computes with the same dequantized NF4 weights (fp32 absmax). A no-op without
    bitsandbytes or 4-bit layers; bitsandbytes is not imported here (~4 s): a model with 4-bit layers has loaded it."""
    import sys

    bnb = sys.modules.get("bitsandbytes.nn")
    if bnb is None:
        return model
    for module in model.modules():
        if isinstance(module, bnb.Linear4bit):
            module.support_avx512bf16_for_cpu = False
    return model


def load_causal_lm(model_dir: Path, plan: LoadPlan, *, offload_dir: Path | None = None):
    """Load a causal LM following ``plan``."""
    from llora_cli.quiet import quiet_libraries

    quiet_libraries()
    import torch
    from transformers import AutoModelForCausalLM

    if plan.strategy == "gguf-dequantized":
        return load_gguf_dequantized(model_dir, torch.float32)
    if plan.strategy.startswith("stored-"):
        # quantized weights load as stored; the rest (embeddings, norms) computes in fp32 on CPU
        return keep_bnb_4bit_unpacked(AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch.float32 if plan.device == "cpu" else "auto"))

    if plan.strategy == "quantized-nf4":
        from transformers import BitsAndBytesConfig

        return keep_bnb_4bit_unpacked(AutoModelForCausalLM.from_pretrained(
            model_dir, quantization_config=BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)))
    if plan.strategy == "offload":
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, device_map="auto",
                                                    offload_folder=str(offload_dir or model_dir / ".offload"))
    dtype = torch.float32 if plan.dtype == "fp32" else torch.bfloat16
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(plan.device)


def quantized_by_bnb(name: str, shape) -> bool:
    """Whether transformers' bitsandbytes integration quantizes the tensor ``name`` of ``shape``: the
    decoder's linear weights (embeddings, norms and the output head stay in full precision)."""
    return ".layers." in name and name.endswith(".weight") and len(shape) == 2


def load_model(base_dir: Path, adapter_dir: Path | None = None, qlora: str | None = None, *,
               plan: LoadPlan | None = None):
    """(tokenizer, eval-mode model, plan): the base loaded as ``plan`` says (planned here when not given),
    with the adapter attached through PEFT when there is one.

    A QLoRA adapter (``qlora`` = nf4 | int8) runs on the quantize-dequantized base weights it was trained
    against: the same numbers bitsandbytes computes with, without its CPU 4-bit kernels (which fail on a
    batch of one sequence here).
    """
    import torch

    from llora_cli import mergeops

    plan = plan or plan_for_dir(base_dir, adapter_dir)
    tokenizer = load_tokenizer(base_dir)
    model = load_causal_lm(base_dir, plan)
    if qlora and plan.strategy in ("full", "full-bf16"):
        round_trip = mergeops.ROUND_TRIPS[qlora]
        with torch.no_grad():
            for name, p in model.named_parameters():
                if quantized_by_bnb(name, p.shape):
                    p.copy_(round_trip(p.data))
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    return tokenizer, model.eval(), plan


class ModelCache:
    """Loads a base once for several evaluations on the same weights (the demo's stages evaluate the compressed
    base and each modifier trained on it): ``with cache.use(base_dir, adapter_dir, qlora) as (tok, model, plan)``
    gives what ``load_model`` gives. It keeps the last base loaded (one at a time: memory stays that of one model);
    an adapter is attached through PEFT for the ``with`` block and removed after it (``unload``: the LoRA layers
    are taken out, the base's weights were never changed), so the next use sees the plain base again.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._loaded: tuple | None = None
        self.loads = 0  # bases actually loaded (the rest were reused)

    def clear(self) -> None:
        """Free the base held (before stages that need the memory)."""
        self._key = self._loaded = None

    @contextmanager
    def use(self, base_dir: Path, adapter_dir: Path | None = None, qlora: str | None = None):
        key = (str(Path(base_dir).resolve()), qlora)
        if key != self._key:
            self._key = self._loaded = None  # the previous base is freed before the next one loads
            self._loaded = load_model(Path(base_dir), None, qlora)
            self._key = key
            self.loads += 1
        tokenizer, model, plan = self._loaded
        if adapter_dir is None:
            yield tokenizer, model, plan
            return
        from peft import PeftModel

        try:
            with_adapter = PeftModel.from_pretrained(model, adapter_dir).eval()
        except BaseException:
            self._key = self._loaded = None  # possibly half-attached: never reused
            raise
        try:
            yield tokenizer, with_adapter, plan
        finally:
            try:
                with_adapter.unload()
            except BaseException:
                self._key = self._loaded = None
                raise
