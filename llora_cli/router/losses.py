"""The router's three training losses over a categorical policy, and the targets they learn from.

The policy: ``logits [n, C]`` over the C candidates of a scenario set (each modifier, and "none" = the base
alone), ``pi = softmax(logits)``. Targets come from measured outcomes, one ``(score, tokens)`` per candidate
of a query (score 1/0 from the task's checker, tokens generated):

- the **best** candidate of a query: highest score, ties broken by fewer generated tokens, then the base alone
  (then candidate order, to be deterministic); a query where no candidate scored 1 has no best;
- **preference pairs** ``(row, winner, loser)``: winner scored higher than loser; and, among the candidates
  that scored 1, the best one beats each other one (the tie rule above). Two failures are never ordered.

Losses (pure torch functions, means over rows / pairs):

- FBC: ``CE(logits, best)``;
- DPO: ``-log sigmoid(beta * ((log pi(w) - log ref(w)) - (log pi(l) - log ref(l))))``, ``ref`` the frozen
  FBC router's logits;
- ORPO: ``CE(logits, best) + lambda * -log sigmoid(log odds(w) - log odds(l))``, ``log odds(p) = log p -
  log(1 - p)`` with ``log(1 - p) = log1mexp(log p)`` (Maechler 2012), no reference.
"""

from __future__ import annotations

import math

LN2 = math.log(2.0)
NONE = "none"  # the candidate "the base alone"


def rank(candidates: list[str], outcomes: dict[str, dict]) -> list[int]:
    """Candidate indices best first: score high, tokens few, the base alone first, then candidate order.
    ``outcomes[name] = {"score": 0|1, "tokens": int}``; a candidate missing from ``outcomes`` ranks last."""
    def key(i: int):
        o = outcomes.get(candidates[i])
        if o is None:
            return (1, 0.0, 0, 0, i)
        return (0, -float(o["score"]), int(o.get("tokens", 0)), 0 if candidates[i] == NONE else 1, i)

    return sorted(range(len(candidates)), key=key)


def best_index(candidates: list[str], outcomes: dict[str, dict]) -> int | None:
    """The best candidate (the FBC target), or None when no candidate scored 1."""
    order = rank(candidates, outcomes)
    first = outcomes.get(candidates[order[0]])
    return order[0] if first is not None and first["score"] >= 1 else None


def preference_pairs(candidates: list[str], outcomes: dict[str, dict]) -> list[tuple[int, int]]:
    """``(winner, loser)`` index pairs of one query (see the module docstring)."""
    pairs: list[tuple[int, int]] = []
    scored = [i for i in range(len(candidates)) if candidates[i] in outcomes]
    for w in scored:
        for lo in scored:
            if outcomes[candidates[w]]["score"] > outcomes[candidates[lo]]["score"]:
                pairs.append((w, lo))
    best = best_index(candidates, outcomes)
    if best is not None:
        pairs += [(best, i) for i in scored if i != best and outcomes[candidates[i]]["score"] >= 1]
    return pairs


def log1mexp(x):
    """``log(1 - exp(x))`` for ``x <= 0``, stable at both ends: ``log(-expm1(x))`` for ``x > -ln 2``, else
    ``log1p(-exp(x))`` (Maechler 2012). ``x`` is clamped just below 0 (``log p`` of a probability that rounded
    to 1); the branch not taken gets a harmless input so no NaN reaches the gradient."""
    import torch

    x = x.clamp(max=-torch.finfo(x.dtype).tiny)
    near_zero = x > -LN2
    a = torch.log(-torch.expm1(torch.where(near_zero, x, torch.full_like(x, -LN2))))
    b = torch.log1p(-torch.exp(torch.where(near_zero, torch.full_like(x, -LN2), x)))
    return torch.where(near_zero, a, b)


def log_odds(logp):
    """``log p - log(1 - p)`` from ``log p``."""
    return logp - log1mexp(logp)


def fbc_loss(logits, best):
    """Cross-entropy to the best candidate. ``logits [n, C]``, ``best [n]`` long -> scalar."""
    import torch.nn.functional as F

    return F.cross_entropy(logits, best)


def _pair_logp(logits, pairs):
    import torch

    logp = torch.log_softmax(logits, dim=-1)
    rows, w, lo = pairs[:, 0], pairs[:, 1], pairs[:, 2]
    return logp[rows, w], logp[rows, lo]


def dpo_loss(logits, ref_logits, pairs, *, beta: float = 0.1):
    """DPO over preference pairs. ``logits, ref_logits [n, C]``; ``pairs [P, 3]`` long rows of
    ``(row, winner, loser)`` -> scalar (mean over pairs)."""
    import torch
    import torch.nn.functional as F

    w, lo = _pair_logp(logits, pairs)
    with torch.no_grad():
        rw, rl = _pair_logp(ref_logits, pairs)
    return -F.logsigmoid(beta * ((w - rw) - (lo - rl))).mean()


def orpo_loss(logits, best_rows, best, pairs, *, lam: float = 0.1):
    """ORPO: NLL of each query's best candidate plus ``lam`` times the odds-ratio term over pairs.
    ``logits [n, C]``; ``best_rows [k]``, ``best [k]`` long (the queries with a best candidate and its index);
    ``pairs [P, 3]`` -> scalar."""
    import torch
    import torch.nn.functional as F

    logp = torch.log_softmax(logits, dim=-1)
    nll = -logp[best_rows, best].mean() if len(best_rows) else logits.sum() * 0
    if len(pairs) == 0:
        return nll
    w, lo = _pair_logp(logits, pairs)
    return nll + lam * -F.logsigmoid(log_odds(w) - log_odds(lo)).mean()
