"""Layer adapters, and running a transformers Llama model with a set of its decoder layers replaced.

A **layer adapter** (seed 002) stands in for one decoder layer: ``h + up(relu(down(h)))`` with ``down:
Linear(H, W)`` and ``up: Linear(W, H)``, ``W`` the bottleneck width (default 64). ``up`` starts at zero, so a
fresh adapter is exactly the identity (plain skipping) and distillation moves it from there (the residual
adapter of Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP").

``replaced_layers(model, layers, adapters)`` swaps the chosen decoder layers of the model for their adapters
(or for the identity when ``adapters`` is None) inside a ``with`` block and puts the original modules back on
the way out, also when the block raises. The set is fixed for the whole block, so one ``generate()`` call
inside it prefills and decodes with the same layers.

The KV cache. In transformers 5.x every attention module writes its keys/values to ``cache.layers[layer_idx]``
(``LlamaAttention.layer_idx``), while ``generate()`` and ``LlamaModel.forward`` read the length already seen
from ``cache.get_seq_length()``, which is layer 0's, and the causal mask takes its sizes from the first full-
attention layer (``masking_utils.find_first_full_attention_index``, 0 for Llama). A replaced layer computes no
attention and writes nothing, so with layer 0 replaced, layer 0 of the cache would stay empty: positions and
masks would restart at 0 at every decode step. The kept layers are therefore renumbered ``0..K-1`` (in order)
for the duration of the block: the cache holds exactly K entries, contiguous from 0, and every reader of layer
0 sees the first kept layer. The original ``layer_idx`` values are restored with the modules. This needs every
layer to have the same cache layer type (all full attention, as Llama); a model whose ``config.layer_types``
mixes types is refused.

Not thread-safe: the set belongs to the model object while the block runs; callers running several requests on
one model group them by set and run one set at a time.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

# This module is the torch layer of dynamic depth (nn.Module subclasses need torch when the class is defined).
# Only depth commands import it, inside their functions; catalog commands never do (tests/router/test_startup.py).
import torch  # noqa: TID253
from torch import nn  # noqa: TID253

from llora_store.errors import BadInput

DEFAULT_WIDTH = 64


class LayerAdapter(nn.Module):
    """``h -> h + up(relu(down(h)))``; ``h: [..., hidden]`` of any float dtype -> the same shape and dtype.

    The adapter's own parameters stay float32 (``down``: ``[width, hidden]`` + ``[width]``, ``up``: ``[hidden,
    width]`` + ``[hidden]``); the input is cast to them and the result back. ``up`` is zero at init: the identity.
    """

    def __init__(self, hidden: int, width: int = DEFAULT_WIDTH) -> None:
        super().__init__()
        self.hidden, self.width = hidden, width
        self.down = nn.Linear(hidden, width)
        self.up = nn.Linear(width, hidden)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        h = hidden_states.to(self.down.weight.dtype)
        return (h + self.up(torch.relu(self.down(h)))).to(hidden_states.dtype)


class ReplacedLayer(nn.Module):
    """What sits in ``model.layers[i]`` while layer ``i`` is replaced: its adapter, or the identity when
    ``adapter`` is None. Takes the decoder layer's call (``hidden_states`` ``[batch, seq, hidden]`` plus the
    mask, positions, cache, ... keywords, all ignored: no attention, no cache write) and returns a tensor of the
    same shape, as ``LlamaDecoderLayer.forward`` does in transformers 5.x."""

    def __init__(self, index: int, adapter: LayerAdapter | None) -> None:
        super().__init__()
        self.index = index
        self.adapter = adapter

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return hidden_states if self.adapter is None else self.adapter(hidden_states)


def decoder_layers(model) -> nn.ModuleList:
    """The ``nn.ModuleList`` of decoder layers of a transformers causal LM (also PEFT-wrapped)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = inner.get_decoder() if hasattr(inner, "get_decoder") else getattr(inner, "model", inner)
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList) or not all(
            hasattr(getattr(getattr(m, "layer", m), "self_attn", None), "layer_idx")  # a search.MixedLayer wraps one
            for m in layers if not isinstance(m, ReplacedLayer)):
        raise BadInput(f"{type(inner).__name__} does not lay out its decoder as .layers[i].self_attn.layer_idx "
                       "(Llama-style); dynamic depth supports Llama-architecture models")
    return layers


def check_layer_set(layers: Sequence[int] | set[int], count: int) -> list[int]:
    """The sorted, de-duplicated layer indices, or BadInput for an index outside ``0..count-1`` or for the set
    of every layer (nothing would attend or fill the cache)."""
    chosen = sorted({int(i) for i in layers})
    bad = [i for i in chosen if not 0 <= i < count]
    if bad:
        raise BadInput(f"layer {bad[0]} does not exist: the model has {count} decoder layers (0..{count - 1})")
    if len(chosen) == count:
        raise BadInput(f"cannot replace all {count} decoder layers: keep at least one")
    return chosen


@contextmanager
def replaced_layers(model, layers: Sequence[int] | set[int],
                    adapters: Sequence[LayerAdapter] | None = None) -> Iterator[list[int]]:
    """Inside the block, decoder layer ``i`` of ``model`` is ``adapters[i]`` (or the identity when ``adapters``
    is None) for every ``i`` in ``layers``; the kept layers' attention ``layer_idx`` are renumbered 0..K-1 so
    the KV cache stays consistent (module docstring). Everything is restored on exit, exceptions included.
    Yields the sorted replaced indices. The empty set changes nothing."""
    mods = decoder_layers(model)
    if any(isinstance(m, ReplacedLayer) for m in mods):
        raise BadInput("layers of this model are already replaced: replaced_layers blocks do not nest")
    count = len(mods)
    chosen = check_layer_set(layers, count)
    if adapters is not None and len(adapters) != count:
        raise BadInput(f"{len(adapters)} layer adapters for a model with {count} decoder layers")
    types = getattr(getattr(model, "config", None), "layer_types", None)
    if chosen and types is not None and len(set(types)) > 1:
        raise BadInput(f"the model mixes attention layer types ({sorted(set(types))}); replacing layers would "
                       "misalign its per-layer cache")
    originals = list(mods)
    old_idx = [m.self_attn.layer_idx for m in originals]
    replaced = set(chosen)
    try:
        for new_idx, i in enumerate(i for i in range(count) if i not in replaced):
            originals[i].self_attn.layer_idx = new_idx
        for i in chosen:
            mods[i] = ReplacedLayer(i, None if adapters is None else adapters[i])
        yield chosen
    finally:
        for i, (module, idx) in enumerate(zip(originals, old_idx)):
            mods[i] = module
            module.self_attn.layer_idx = idx
