"""The router's depth heads (seed 002): which decoder layers to replace, and how many; their targets and losses.

Heads, on the same frozen sentence embedding as the choice head (``model.make_head``):

- **layer head** ``[n, 384] -> [n, L]`` logits; ``s = sigmoid(logits)`` is each layer's score (higher: replace it);
- **ratio head** ``[n, 384] -> [n, 2]``: ``mu`` (the mean fraction of layers to replace) and ``log_std``.

At inference ``k = round(mu * L)`` (clipped to ``0..L-1``; sampling ``Normal(mu, std)`` only on request) and the
layers are the hard top-k of the scores (``topk.hard_topk``).

Scenarios of one query (a depth scenario set row, ``scenarios.py``): the empty set (score 1.0) and every step of
its greedy path ``(layers, score)``. A set is the indicator ``z in {0,1}^L``, its ratio ``r = |z| / L``.

The policy's log-probability of a set (``set_log_prob``)::

    log pi(z) = sum_i [z_i log s_i + (1 - z_i) log(1 - s_i)]  +  log P(k = |z|)

with ``P(k)`` the mass of ``Normal(mu, std)`` on the ratio bin ``[(k - 1/2)/L, (k + 1/2)/L]``: the log density of
``r`` plus ``log(1/L)`` up to the bin's curvature. The issue and seed 002 write the log density; a density can
exceed 1 (a small ``std``), and ORPO's ``log(1 - pi)`` needs a probability, so the bin's mass is used for all
three methods (for DPO the two differ by about the same ``log L`` on both sides of a pair, which cancels).

Losses (means over rows / pairs; ``alpha`` weighs the layer terms as seed 002's ``alpha``):

- **FBC** on scenarios with score >= ``good`` (0.99) (``fitting.py`` takes each query's largest such set, the empty
  set when no layer of the query can be replaced: ``r = 0`` is what the ratio head must learn there): ``MSE(mu, r) + alpha *
  (MSE(s, z) + MSE(soft_topk(logits, |z|), z))``. The last term is where gradients pass through the selection
  (``topk.soft_topk``, Sinkhorn with annealed epsilon): it trains the scores so that the top-|z| layers, which
  inference takes, are the set, not only each score toward its indicator.
- **DPO** on pairs of scenarios of one query (higher score wins; ties: more layers replaced wins; identical sets
  dropped): ``-log sigmoid(beta * ((log pi(w) - log ref(w)) - (log pi(l) - log ref(l))))``, ``ref`` the frozen
  FBC heads.
- **ORPO**: ``MSE(mu, r_w) + alpha * MSE(s, z_w)`` on the pairs' winners (the SFT term, as seed 002 writes it)
  ``+ lam * -log sigmoid(log odds(w) - log odds(l))``, ``log odds = log pi - log1mexp(log pi)``.
"""

from __future__ import annotations

import math

GOOD = 0.99
LAYERS = "layers"  # head names in router.safetensors / router.json
RATIO = "ratio"
MIN_LOG_STD, MAX_LOG_STD = -5.0, 1.0  # std in [0.0067, 2.7]: bounded so the bin masses stay finite


def scenarios_of(row: dict) -> list[tuple[frozenset[int], float]]:
    """``[(layer set, score), ...]`` of one depth scenario row: the empty set (1.0), then each step of its path."""
    out = [(frozenset(), 1.0)]
    out += [(frozenset(s["layers"]), float(s["score"])) for s in row["depth"]["steps"]]
    return out


def better(a: tuple[frozenset, float], b: tuple[frozenset, float]) -> bool:
    """Seed 002's comparison: higher score wins; on equal scores, more layers replaced wins."""
    return a[1] > b[1] or (a[1] == b[1] and len(a[0]) > len(b[0]))


def preference_pairs(row: dict) -> list[tuple[frozenset, frozenset]]:
    """``(winner, loser)`` sets of one query; identical sets and exact ties (same score, same size) dropped."""
    sc = scenarios_of(row)
    pairs = []
    for i, a in enumerate(sc):
        for b in sc[i + 1:]:
            if a[0] == b[0]:
                continue
            if better(a, b):
                pairs.append((a[0], b[0]))
            elif better(b, a):
                pairs.append((b[0], a[0]))
    return pairs


def good_sets(row: dict, *, good: float = GOOD) -> list[frozenset]:
    """The FBC targets of one query: non-empty sets of its path scoring at least ``good``."""
    return [s for s, score in scenarios_of(row)[1:] if score >= good]


def indicator(sets: list[frozenset], count: int):
    """``[len(sets), count]`` float32 0/1 tensor."""
    import torch

    z = torch.zeros(len(sets), count)
    for r, s in enumerate(sets):
        if s:
            z[r, sorted(s)] = 1.0
    return z


def split_ratio(out):
    """Ratio head output ``[n, 2]`` -> ``(mu [n], log_std [n])``, log_std clamped to its bounds."""
    return out[:, 0], out[:, 1].clamp(MIN_LOG_STD, MAX_LOG_STD)


def ratio_log_mass(mu, log_std, k, count: int):
    """``log P(k)``: the log mass of ``Normal(mu, exp(log_std))`` on ``[(k - 1/2)/L, (k + 1/2)/L]``. ``mu, log_std,
    k``: ``[n]`` tensors -> ``[n]``. Computed as ``log(Phi(b) - Phi(a))`` via ``log_ndtr`` differences (stable in
    both tails)."""
    import torch

    std = torch.exp(log_std)
    a = ((k - 0.5) / count - mu) / std
    b = ((k + 0.5) / count - mu) / std
    # log(Phi(b) - Phi(a)) = log_ndtr(b) + log1mexp(log_ndtr(a) - log_ndtr(b)); use the upper tail when a > 0
    from llora_cli.router.losses import log1mexp

    upper = a > 0
    lo = torch.where(upper, -b, a)
    hi = torch.where(upper, -a, b)
    lb, la = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    return lb + log1mexp((la - lb).clamp(max=-1e-12))


def set_log_prob(logits, mu, log_std, z):
    """``log pi(z)`` (module docstring). ``logits [n, L]``, ``mu, log_std [n]``, ``z [n, L]`` 0/1 -> ``[n]``."""
    import torch.nn.functional as F

    count = logits.shape[1]
    bern = (z * F.logsigmoid(logits) + (1 - z) * F.logsigmoid(-logits)).sum(-1)
    return bern + ratio_log_mass(mu, log_std, z.sum(-1), count)


def fbc_loss(logits, mu, z, *, alpha: float = 1.0, eps: float = 0.1):
    """FBC (module docstring). ``logits [n, L]``, ``mu [n]``, ``z [n, L]`` (each row 0 <= |z| < L) -> scalar.

    A row with ``|z| = 0`` (a query none of whose layers can be replaced) counts in the ratio and score terms (its
    ``r = 0``, every score toward 0); the soft top-k term, undefined at ``k = 0``, averages over the other rows
    (0 when there are none)."""
    import torch
    import torch.nn.functional as F

    from llora_cli.router.depth.topk import soft_topk

    count = logits.shape[1]
    k = z.sum(-1)
    scores = torch.sigmoid(logits)
    some = k > 0
    sel = F.mse_loss(soft_topk(logits[some], k[some], eps=eps), z[some]) if bool(some.any()) else logits.sum() * 0
    return F.mse_loss(mu, k / count) + alpha * (F.mse_loss(scores, z) + sel)


def dpo_loss(lp_w, lp_l, ref_w, ref_l, *, beta: float = 0.1):
    """DPO over set pairs: ``lp_*`` the policy's, ``ref_*`` the frozen reference's ``log pi`` ``[P]`` -> scalar."""
    import torch.nn.functional as F

    return -F.logsigmoid(beta * ((lp_w - ref_w.detach()) - (lp_l - ref_l.detach()))).mean()


def orpo_loss(lp_w, lp_l, logits_w, mu_w, z_w, *, lam: float = 0.1, alpha: float = 1.0):
    """ORPO over set pairs: SFT on the winners (``logits_w [P, L]``, ``mu_w [P]``, ``z_w [P, L]``) plus ``lam``
    times the odds-ratio term of ``lp_w, lp_l [P]`` -> scalar."""
    import torch
    import torch.nn.functional as F

    from llora_cli.router.losses import log_odds

    count = logits_w.shape[1]
    sft = F.mse_loss(mu_w, z_w.sum(-1) / count) + alpha * F.mse_loss(torch.sigmoid(logits_w), z_w)
    return sft + lam * -F.logsigmoid(log_odds(lp_w) - log_odds(lp_l)).mean()


def choose_k(mu: float, count: int, *, std: float | None = None, rng=None) -> int:
    """Layers to replace: ``round(mu * L)`` (deterministic), or with ``rng`` (numpy Generator) a draw of
    ``Normal(mu, std) * L`` rounded; clipped to ``0..L-1`` (at least one layer is kept)."""
    r = mu if rng is None or std is None else float(rng.normal(mu, std))
    return int(min(count - 1, max(0, math.floor(r * count + 0.5))))
