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
renumbering. The cost of a step is one forward of ``L - |S|`` copies of the query, in which rows that replaced the
same layers below layer ``i`` run layer ``i`` once (``shared_rows``): about half the layer work of running every row
(measured on SmolLM2: 0.563x the time of a 30-candidate step, benchmarks/depth_search_sharing.py); a whole search is
at most ``floor(max_fraction * L) + 1`` steps.
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
    the real layer's output.

    Shared prefixes (``share``, set with ``replace``): rows whose inputs to this layer are known to be identical
    (they replaced the same earlier layers) form a group, and the real layer runs once per group that needs it:
    ``share = (need, src)``, ``need`` the int64 indices of the rows it runs on (one per group that has a row not
    replacing this layer), ``src [batch]`` int64 the position in ``need`` whose output row ``r`` takes (any value
    for a replaced row). Without ``share`` the real layer runs on every row.
    """

    def __init__(self, index: int, layer: nn.Module, adapter: LayerAdapter | None) -> None:
        super().__init__()
        self.index = index
        self.layer = layer
        self.adapter = adapter
        self.replace: torch.Tensor | None = None
        self.share: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        if self.share is None:
            out = self.layer(hidden_states, *args, **kwargs)
        else:
            need, src = self.share
            batch = hidden_states.shape[0]
            if len(need) == 0:  # every row replaces this layer
                out = None
            else:
                sub = self.layer(hidden_states[need], *args, **_rows_of(kwargs, need, batch))
                out = sub[0][src] if isinstance(sub, tuple) else sub[src]
                out = (out, *sub[1:]) if isinstance(sub, tuple) else out
        if self.replace is None or not bool(self.replace.any()):
            return out
        sub = hidden_states if self.adapter is None else self.adapter(hidden_states)
        if out is None:
            return sub
        real = out[0] if isinstance(out, tuple) else out
        mixed = torch.where(self.replace.to(real.device)[:, None, None], sub.to(real.dtype), real)
        return (mixed, *out[1:]) if isinstance(out, tuple) else mixed


def _rows_of(kwargs: dict, rows: torch.Tensor, batch: int) -> dict:
    """The decoder layer's keywords for a subset of the batch's rows: tensors of two or more dimensions (and tuples
    of them, e.g. the rotary ``position_embeddings``, the attention mask) whose first dimension is the batch are
    indexed; the rest (batch-1 broadcasts, 1-d positions, None, caches) pass unchanged."""
    def pick(v):
        if isinstance(v, torch.Tensor) and batch > 1 and v.dim() >= 2 and v.shape[0] == batch:
            return v[rows]
        if isinstance(v, tuple) and v and all(isinstance(x, torch.Tensor) for x in v):
            return tuple(pick(x) for x in v)
        return v

    return {k: pick(v) for k, v in kwargs.items()}


def shared_rows(sets: Sequence[set[int]], index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(need, src)`` for ``MixedLayer.share`` at decoder layer ``index``: rows with the same replaced layers below
    ``index`` have identical inputs there (same tokens, same computation) and share one run of the real layer;
    groups whose rows all replace ``index`` need none."""
    groups: dict[tuple[int, ...], int] = {}
    need: list[int] = []
    src = []
    for r, s in enumerate(sets):
        if index in s:
            src.append(0)
            continue
        key = tuple(sorted(i for i in s if i < index))
        if key not in groups:
            groups[key] = len(need)
            need.append(r)
        src.append(groups[key])
    return torch.tensor(need, dtype=torch.long), torch.tensor(src, dtype=torch.long)


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
                   batch: int, *, share: bool = True) -> torch.Tensor:
    """``[len(sets), len(ids) - start]`` int64: for each set (its layers replaced), the argmax at every position
    that predicts an answer token (positions ``start - 1 .. len(ids) - 2``). Every row is the same query, so rows
    that replaced the same layers below layer ``i`` share one run of it (``shared_rows``; ``share=False`` runs every
    row, the reference the tests compare with): a greedy step's candidates ``S + {c}`` agree below ``c``, which
    halves the layer work of a step."""
    n_answer = len(ids) - start
    out = []
    row = torch.tensor([ids], dtype=torch.long)
    for lo in range(0, len(sets), batch):
        chunk = sets[lo:lo + batch]
        for m in mixed:
            m.replace = torch.tensor([m.index in s for s in chunk], dtype=torch.bool)
            m.share = shared_rows(chunk, m.index) if share else None
        try:
            with torch.no_grad():
                logits = model(input_ids=row.expand(len(chunk), -1), use_cache=False,
                               logits_to_keep=n_answer + 1).logits
        finally:
            for m in mixed:
                m.replace = m.share = None
        out.append(logits[:, :n_answer].argmax(-1))
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
