"""The router model: heads on the frozen sentence embedding, and its two files.

``router.safetensors`` holds every head's tensors under ``<head>.<param>`` (today one head, ``choice``);
``router.json`` says what they mean::

    {"format": "llora-router", "version": 1,
     "encoder": {name, package, version, dim, weights: {file: sha256}},
     "heads": {"choice": {"type": "mlp", "in": 384, "hidden": 128, "out": C,
                          "candidates": ["none", <modifier id>, ...],
                          "method": "orpo", "config": {...}}}}

The depth heads (issue 14, ``router fit --depth``) are two more entries: ``layers`` (``out`` = L, one score per
decoder layer, plus ``"layers": L``, ``"layer_set"``, ``"scenarios"``) and ``ratio`` (``out`` = 2: mu, log_std);
a reader ignores heads it does not know. Loading checks the encoder identity and the file.
The heads are fitted with torch (``make_head``) and run with numpy, so routing a request never imports torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from llora_store.errors import Corrupt

FORMAT = "llora-router"
VERSION = 1
WEIGHTS_FILE = "router.safetensors"
SPEC_FILE = "router.json"
CHOICE = "choice"
DEPTH_LAYERS, DEPTH_RATIO = "layers", "ratio"  # the depth heads (router/depth/heads.py), when fitted with --depth


def make_head(dim: int, hidden: int, out: int):
    """``Linear(dim, hidden)-ReLU-Linear(hidden, out)``, or ``Linear(dim, out)`` when ``hidden`` is 0.
    Input ``[n, dim]`` embeddings, output ``[n, out]`` logits."""
    from torch import nn

    if hidden <= 0:
        return nn.Sequential(nn.Linear(dim, out))
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, out))


def head_spec(head) -> dict:
    layers = [m for m in head if hasattr(m, "weight")]
    return {"type": "mlp", "in": layers[0].in_features,
            "hidden": layers[0].out_features if len(layers) > 1 else 0, "out": layers[-1].out_features}


def save(directory: Path, heads: dict[str, tuple[object, dict]], encoder_identity: dict) -> None:
    """Write ``heads = {name: (module, extra spec)}`` and the encoder identity into ``directory``."""
    from safetensors.torch import save_file

    tensors = {}
    spec = {"format": FORMAT, "version": VERSION, "encoder": encoder_identity, "heads": {}}
    for name, (module, extra) in heads.items():
        for key, value in module.state_dict().items():
            tensors[f"{name}.{key}"] = value.detach().to("cpu").contiguous()
        spec["heads"][name] = {**head_spec(module), **extra}
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": FORMAT})
    (directory / SPEC_FILE).write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")


def read_spec(directory: Path) -> dict:
    path = directory / SPEC_FILE
    try:
        spec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise Corrupt(f"cannot read the router file {path}: {e}", hint="check it with: llora verify ID") from None
    if spec.get("format") != FORMAT or spec.get("version") != VERSION or CHOICE not in spec.get("heads", {}):
        raise Corrupt(f"{path} is not a llora router file of version {VERSION}")
    return spec


def head_layers(tensors: dict, name: str, h: dict, *, what: str) -> list[tuple]:
    """A head's ``[(weight [out, in], bias [out]), ...]`` as numpy arrays from ``router.safetensors``' tensors
    (``make_head``'s ``nn.Sequential`` names: ``<name>.0.*`` then, with a hidden layer, ``<name>.2.*``)."""
    shapes = [(h["hidden"], h["in"]), (h["out"], h["hidden"])] if h["hidden"] > 0 else [(h["out"], h["in"])]
    layers = []
    for i, shape in zip((0, 2), shapes):
        w, b = tensors.get(f"{name}.{i}.weight"), tensors.get(f"{name}.{i}.bias")
        if w is None or b is None or tuple(w.shape) != shape or tuple(b.shape) != shape[:1]:
            raise Corrupt(f"{what}: head '{name}' does not match its tensors (layer {i}: expected weight "
                          f"{list(shape)} and bias [{shape[0]}])")
        layers.append((w, b))
    return layers


@dataclass
class Router:
    """A loaded router: the encoder, its heads (numpy; no torch at request time), and the candidates of the
    choice head."""

    spec: dict
    heads: dict  # name -> [(weight [out, in], bias [out]), ...], ReLU between layers
    encoder: object

    @property
    def candidates(self) -> list[str]:
        return list(self.spec["heads"][CHOICE]["candidates"])

    @classmethod
    def load(cls, directory: Path, *, what: str, encoder=None) -> Router:
        """Load the heads; refuse a router fitted on another encoder than the one installed (``what`` names it)."""
        from safetensors.numpy import load_file

        from llora_cli.router import encoder as enc

        spec = read_spec(directory)
        enc.check_identity(spec["encoder"], what=what)
        tensors = load_file(str(directory / WEIGHTS_FILE))
        heads = {name: head_layers(tensors, name, h, what=what)
                 for name, h in spec["heads"].items() if h.get("type") == "mlp"}  # others: heads this version ignores
        return cls(spec, heads, encoder if encoder is not None else enc.shared())

    def forward(self, name: str, embeddings):
        """Head ``name`` on ``[n, 384]`` float32 embeddings -> ``[n, out]`` raw outputs (numpy)."""
        import numpy as np

        x = embeddings
        layers = self.heads[name]
        for i, (w, b) in enumerate(layers):
            x = x @ w.T + b
            if i < len(layers) - 1:
                x = np.maximum(x, 0)
        return x

    @property
    def depth_layers(self) -> int | None:
        """The decoder layer count of the depth heads, or None when the router has none (fitted without --depth)."""
        h = self.spec["heads"].get(DEPTH_LAYERS)
        return int(h["layers"]) if h and DEPTH_LAYERS in self.heads and DEPTH_RATIO in self.heads else None

    def layer_sets(self, embeddings, *, k: int | None = None) -> list[list[int]]:
        """Per query, the decoder layers to replace: ``k`` (default ``round(mu * L)``, seed 002's deterministic
        choice, at most L - 1) layers of highest score (ties: the lower index). ``[n, 384]`` -> n sorted lists.
        ValueError when the router has no depth heads or ``k`` is outside ``0..L-1``."""
        import numpy as np

        from llora_cli.router.depth.heads import choose_k

        count = self.depth_layers
        if count is None:
            raise ValueError("this router has no depth heads (it was fitted without --depth)")
        if k is not None and not 0 <= k < count:
            raise ValueError(f"k={k} layers: must be in 0..{count - 1}")
        scores = self.forward(DEPTH_LAYERS, embeddings)
        mu = self.forward(DEPTH_RATIO, embeddings)[:, 0]
        out = []
        for row, m in zip(scores, mu):
            kk = k if k is not None else choose_k(float(m), count)
            order = np.argsort(-row, kind="stable")[:kk]
            out.append(sorted(int(i) for i in order))
        return out

    def probabilities(self, embeddings):
        """``[n, 384]`` float32 embeddings -> ``[n, C]`` probabilities over the candidates (numpy)."""
        import numpy as np

        x = self.forward(CHOICE, embeddings)
        x = x - x.max(axis=1, keepdims=True)
        e = np.exp(x)
        return e / e.sum(axis=1, keepdims=True)

    def choose(self, texts: list[str]):
        """``(indices [n], probabilities [n, C])`` for the queries ``texts``, encoder included."""
        probs = self.probabilities(self.encoder.encode(texts))
        return probs.argmax(axis=1), probs
