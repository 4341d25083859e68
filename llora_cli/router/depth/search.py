"""Seed 002's greedy depth search: per query, which decoder layers can be replaced by their layer adapters.

Score of a layer set ``S`` on one query = agreement with the full model under teacher forcing: the sequence is the
prompt followed by the full model's own greedy answer; one forward pass with the layers of ``S`` replaced by their
adapters gives, at every answer position, the next-token argmax; the score is the fraction of answer positions
whose argmax equals the full model's (a set that changes nothing scores 1.0).

Greedy search (seed 002, phase 2): start with nothing replaced; at each step try every remaining layer ``c``, score
``S + {c}``, and keep the best (ties: the lower layer index) if its score is at least ``threshold`` (default 0.99);
stop when no candidate reaches the threshold, or when ``floor(max_fraction * L)`` layers are replaced (never all
``L``). Every step's set and score is returned: the path is the query's scenarios (the router's layer and ratio
heads are fitted on them).

One pass per step, not one per candidate: ``mixed_layers`` puts a ``MixedLayer`` in every decoder slot, which runs
the real layer and its adapter and keeps, per batch row, one or the other; a step stacks the query once per
candidate (row ``r`` replaces ``S + {c_r}``) and scores all candidates in one batched forward pass (split into
chunks of ``batch`` rows only to bound the logits' memory: ``rows x answer tokens x vocab`` float32). The passes run
without a KV cache (``use_cache=False``), so replacing layers needs none of ``layers.replaced_layers``' cache
renumbering. The cost of a step is one forward of ``L - |S|`` copies of the query; a whole search is at most
``floor(max_fraction * L) + 1`` steps.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

# The torch layer of dynamic depth, imported only by depth commands (tests/router/test_startup.py).
import torch  # noqa: TID253
from torch import nn  # noqa: TID253

from llora_cli.router.depth.layers import LayerAdapter, ReplacedLayer, decoder_layers
from llora_store.errors import BadInput

DEFAULT_THRESHOLD = 0.99
DEFAULT_MAX_FRACTION = 0.5
DEFAULT_BATCH = 8


class MixedLayer(nn.Module):
    """Decoder layer ``index`` for a batch whose rows choose, each, the real layer or its adapter.

    ``replace`` is a bool tensor ``[batch]`` (None or all False: the real layer for every row). Input
    ``hidden_states [batch, seq, hidden]`` plus the decoder layer's keywords (passed to the real layer); output the
    same shape: row ``r`` is ``adapter(h[r])`` where ``replace[r]`` (the identity when ``adapter`` is None), else
    the real layer's output. The real layer runs on every row (one pass for the batch); its result is discarded
    on replaced rows.
    """

    def __init__(self, index: int, layer: nn.Module, adapter: LayerAdapter | None) -> None:
        super().__init__()
        self.index = index
        self.layer = layer
        self.adapter = adapter
        self.replace: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        out = self.layer(hidden_states, *args, **kwargs)
        if self.replace is None or not bool(self.replace.any()):
            return out
        real = out[0] if isinstance(out, tuple) else out
        sub = hidden_states if self.adapter is None else self.adapter(hidden_states)
        mixed = torch.where(self.replace.to(real.device)[:, None, None], sub.to(real.dtype), real)
        return (mixed, *out[1:]) if isinstance(out, tuple) else mixed


@contextmanager
def mixed_layers(model, adapters: Sequence[LayerAdapter | None]) -> Iterator[list[MixedLayer]]:
    """Inside the block every decoder layer ``i`` of ``model`` is wrapped in a ``MixedLayer`` with ``adapters[i]``
    (None = plain skipping); set each one's ``replace`` per forward. Restored on exit, exceptions included.
    BadInput when the adapter count differs from the layer count or layers are already replaced."""
    mods = decoder_layers(model)
    if any(isinstance(m, (ReplacedLayer, MixedLayer)) for m in mods):
        raise BadInput("layers of this model are already replaced: depth blocks do not nest")
    if len(adapters) != len(mods):
        raise BadInput(f"{len(adapters)} layer adapters for a model with {len(mods)} decoder layers")
    originals = list(mods)
    mixed = [MixedLayer(i, m, adapters[i]) for i, m in enumerate(originals)]
    try:
        for i, m in enumerate(mixed):
            mods[i] = m
        yield mixed
    finally:
        for i, m in enumerate(originals):
            mods[i] = m


def _answer_argmax(model, mixed: list[MixedLayer], ids: list[int], start: int, sets: list[set[int]],
                   batch: int) -> torch.Tensor:
    """``[len(sets), len(ids) - start]`` int64: for each set (its layers replaced), the argmax at every position
    that predicts an answer token (positions ``start - 1 .. len(ids) - 2``)."""
    n_answer = len(ids) - start
    out = []
    row = torch.tensor([ids], dtype=torch.long)
    for lo in range(0, len(sets), batch):
        chunk = sets[lo:lo + batch]
        for m in mixed:
            m.replace = torch.tensor([m.index in s for s in chunk], dtype=torch.bool)
        with torch.no_grad():
            logits = model(input_ids=row.expand(len(chunk), -1), use_cache=False,
                           logits_to_keep=n_answer + 1).logits
        out.append(logits[:, :n_answer].argmax(-1))
    for m in mixed:
        m.replace = None
    return torch.cat(out)


def score_sets(model, mixed: list[MixedLayer], ids: list[int], start: int, sets: Sequence[Sequence[int]],
               reference: torch.Tensor, *, batch: int = DEFAULT_BATCH) -> list[float]:
    """Agreement (0..1) of each layer set with ``reference`` (``[len(ids) - start]``, the full model's argmax at the
    answer positions): the fraction of answer positions whose argmax is unchanged with the set's layers replaced.
    ``ids``: prompt + answer token ids; ``start``: index of the first answer token."""
    got = _answer_argmax(model, mixed, ids, start, [set(s) for s in sets], batch)
    return (got == reference[None, :]).float().mean(-1).tolist()


def greedy_search(model, adapters: Sequence[LayerAdapter | None], prompt: list[int], answer: list[int], *,
                  threshold: float = DEFAULT_THRESHOLD, max_fraction: float = DEFAULT_MAX_FRACTION,
                  batch: int = DEFAULT_BATCH) -> dict:
    """Seed 002's greedy search on one query (module docstring).

    ``prompt`` and ``answer``: token ids (the answer being the full model's own greedy answer). Returns
    ``{"layers": [final set, sorted], "score": its score (1.0 when empty), "steps": [{"added", "layers",
    "score"}, ...] (every accepted step, in order), "passes": forward passes run (the reference included),
    "answer_tokens": len(answer), "limit": the most layers it could replace}``. BadInput for an empty answer, a
    threshold outside (0, 1] or a max_fraction outside [0, 1)."""
    if not answer:
        raise BadInput("the answer has no tokens: there is nothing to score a layer set on")
    if not 0 < threshold <= 1:
        raise BadInput(f"threshold {threshold} must be in (0, 1]")
    if not 0 <= max_fraction < 1:
        raise BadInput(f"max_fraction {max_fraction} must be in [0, 1): at least one layer is always kept")
    ids, start = list(prompt) + list(answer), len(prompt)
    with mixed_layers(model, adapters) as mixed:
        count = len(mixed)
        limit = min(count - 1, math.floor(max_fraction * count))
        reference = _answer_argmax(model, mixed, ids, start, [set()], batch)[0]
        passes, chosen, steps, score = 1, [], [], 1.0
        while len(chosen) < limit:
            candidates = [i for i in range(count) if i not in chosen]
            scores = score_sets(model, mixed, ids, start, [[*chosen, c] for c in candidates], reference,
                                batch=batch)
            passes += 1
            best = max(range(len(candidates)), key=lambda j: (scores[j], -candidates[j]))
            if scores[best] < threshold:
                break
            chosen.append(candidates[best])
            score = scores[best]
            steps.append({"added": candidates[best], "layers": sorted(chosen), "score": round(score, 6)})
    return {"layers": sorted(chosen), "score": round(score, 6), "steps": steps, "passes": passes,
            "answer_tokens": len(answer), "limit": limit}
