"""The router model: heads on the frozen sentence embedding, and its two files.

``router.safetensors`` holds every head's tensors under ``<head>.<param>`` (today one head, ``choice``);
``router.json`` says what they mean::

    {"format": "llora-router", "version": 1,
     "encoder": {name, package, version, dim, weights: {file: sha256}},
     "heads": {"choice": {"type": "mlp", "in": 384, "hidden": 128, "out": C,
                          "candidates": ["none", <modifier id>, ...],
                          "method": "orpo", "config": {...}}}}

More heads (issue 14: which decoder layers to replace, and how many) are more entries of ``heads`` and more
tensor prefixes; a reader ignores heads it does not know. Loading checks the encoder identity and the file.
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


@dataclass
class Router:
    """A loaded router: the encoder, its heads, and the candidates of the choice head."""

    spec: dict
    heads: dict
    encoder: object

    @property
    def candidates(self) -> list[str]:
        return list(self.spec["heads"][CHOICE]["candidates"])

    @classmethod
    def load(cls, directory: Path, *, what: str, encoder=None) -> Router:
        """Load the heads; refuse a router fitted on another encoder than the one installed (``what`` names it)."""
        from safetensors.torch import load_file

        from llora_cli.router import encoder as enc

        spec = read_spec(directory)
        enc.check_identity(spec["encoder"], what=what)
        tensors = load_file(str(directory / WEIGHTS_FILE))
        heads = {}
        for name, h in spec["heads"].items():
            if h.get("type") != "mlp":
                continue  # a head this version does not know
            module = make_head(h["in"], h["hidden"], h["out"])
            state = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}
            try:
                module.load_state_dict(state)
            except RuntimeError as e:
                raise Corrupt(f"{what}: head '{name}' does not match its tensors: {e}") from None
            heads[name] = module.eval()
        return cls(spec, heads, encoder if encoder is not None else enc.shared())

    def probabilities(self, embeddings):
        """``[n, 384]`` float32 embeddings -> ``[n, C]`` probabilities over the candidates (numpy)."""
        import torch

        with torch.no_grad():
            logits = self.heads[CHOICE](torch.from_numpy(embeddings))
            return torch.softmax(logits, dim=-1).numpy()

    def choose(self, texts: list[str]):
        """``(indices [n], probabilities [n, C])`` for the queries ``texts``, encoder included."""
        probs = self.probabilities(self.encoder.encode(texts))
        return probs.argmax(axis=1), probs
