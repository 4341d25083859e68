"""Fitting the router's depth heads (``heads.py``) on a depth scenario set, with FBC, DPO or ORPO.

As for the choice head (``router/fit.py``): the queries are embedded once, the same hash of the query keeps a
fraction out of training, ``dpo`` and ``orpo`` start from the FBC fit (DPO's frozen reference is that FBC fit).
FBC clones, per query, the largest set of its path scoring at least 0.99 (its most efficient set measured to keep
the answer; the empty set when none does, so that the ratio head learns where not to replace anything; cloning
every set of the nested path would average ``{3}`` and ``{2, 3}`` into "1.5 layers" and under-replace),
and anneals the soft top-k's epsilon geometrically from 0.5 to 0.1 over its steps. DPO and ORPO
rank a query's sets as the issue and seed 002 write (score first, then more layers), so they move the heads
toward the largest set at the query's best score (1.0 where the path has ties at exact agreement), which can be
smaller than FBC's target: a set at 0.995 loses to one at 1.0.

Held-out figures, per query: the predicted ``k = round(mu * L)`` and set (hard top-k of the layer scores) against
the query's path: ``target`` = its largest set scoring at least 0.99 (empty when none); ``exact`` = the predicted set
is the target; ``safe`` = the predicted set is one of the path's sets scoring at least 0.99 (or empty), i.e. a set
measured to keep the answer; mean predicted and target k. ``overreach_warning`` flags heads that replace far more
layers than the training queries' targets (DPO can: it orders every pair right with k = 29 of 30).
"""

from __future__ import annotations

from collections.abc import Callable

from llora_cli.router.depth import heads
from llora_store.errors import BadInput

EPS_START, EPS_END = 0.5, 0.1


def _target(row: dict) -> frozenset:
    good = heads.good_sets(row)
    return max(good, key=len) if good else frozenset()


def predict(layer_head, ratio_head, x, count: int) -> list[frozenset]:
    """Deterministic inference: ``k = round(mu * L)``, the hard top-k of the layer scores. ``x [n, dim]``."""
    import torch

    from llora_cli.router.depth.topk import hard_topk

    with torch.no_grad():
        logits = layer_head(x)
        mu, _ = heads.split_ratio(ratio_head(x))
        ks = torch.tensor([heads.choose_k(m, count) for m in mu.tolist()])
        mask = hard_topk(logits, ks)
    return [frozenset(torch.nonzero(r).flatten().tolist()) for r in mask]


def figures(predicted: list[frozenset], rows: list[dict]) -> dict:
    """The held-out figures of the module docstring."""
    n = len(rows)
    if not n:
        return {"n": 0}
    targets = [_target(r) for r in rows]
    safe = sum(p == frozenset() or p in set(heads.good_sets(r)) for p, r in zip(predicted, rows))
    return {"n": n, "exact": sum(p == t for p, t in zip(predicted, targets)), "safe": safe,
            "safe_rate": round(safe / n, 4), "k_predicted_mean": round(sum(map(len, predicted)) / n, 3),
            "k_target_mean": round(sum(map(len, targets)) / n, 3)}


def overreach_warning(figs: dict, count: int) -> str | None:
    """A warning when the fitted heads replace far more layers than the scenarios measured safe: the mean predicted
    ``k`` above ``target + max(2, target)`` on the training queries (``figs``: ``figures()`` of them). Measured on
    SmolLM2 (docs/benchmarks.md, "The protocol at n = 40"): DPO's heads ordered every preference pair right and
    predicted 29 of 30 layers for every query, where the target mean was 1.75; nothing else in the fit shows it."""
    if not figs.get("n"):
        return None
    kp, kt = figs["k_predicted_mean"], figs["k_target_mean"]
    if kp <= kt + max(2.0, kt):
        return None
    return (f"the depth heads replace {kp:g} of {count} layers on average where the scenarios keep the answer at "
            f"{kt:g} (the predicted set measured safe on {figs['safe']} of {figs['n']} training queries): with "
            "--depth auto this router would change most answers; fit the depth heads with --method fbc, or serve "
            "this router with --depth full")


def pairs_ordered(layer_head, ratio_head, x, rows: list[dict], count: int) -> dict:
    """Of the preference pairs of ``rows`` (``x [n, dim]`` their embeddings), how many the heads order right:
    ``log pi(winner) > log pi(loser)``. What DPO optimises; FBC's exact-set figure does not show it."""
    import torch

    pairs = [(i, w, lo) for i, r in enumerate(rows) for w, lo in heads.preference_pairs(r)]
    if not pairs:
        return {"ordered": 0, "n": 0, "rate": None}
    idx = torch.tensor([i for i, _, _ in pairs], dtype=torch.long)
    with torch.no_grad():
        logits = layer_head(x[idx])
        mu, log_std = heads.split_ratio(ratio_head(x[idx]))
        lw = heads.set_log_prob(logits, mu, log_std, heads.indicator([w for _, w, _ in pairs], count))
        ll = heads.set_log_prob(logits, mu, log_std, heads.indicator([lo for _, _, lo in pairs], count))
    k = int((lw > ll).sum())
    return {"ordered": k, "n": len(pairs), "rate": round(k / len(pairs), 4)}


def train_depth_heads(emb, rows: list[dict], count: int, method: str, cfg,
                      progress: Callable[[str, int, int], None] | None = None):
    """Fit the layer and ratio heads. ``emb [n, dim]`` float32 (numpy) of ``rows`` (depth scenario rows), ``count``
    the decoder layers, ``cfg`` a ``fit.FitConfig``. Returns ``(layer_head, ratio_head, curve)``. BadInput when no
    scenario replaces a layer at score >= 0.99 (nothing to clone) or, for dpo/orpo, no pair exists."""
    import torch

    from llora_cli.router.fit import adam_stage
    from llora_cli.router.model import make_head

    torch.manual_seed(cfg.seed)
    x = torch.from_numpy(emb)
    # every query counts, those with nothing replaceable too (target: the empty set, k = 0); leaving them out
    # taught the ratio head the k of the other queries only (measured: 5.6 layers predicted for a mean target of 1.75)
    good = [(i, s) for i, r in enumerate(rows) for s in [_target(r)] if len(s) < count]
    if not any(s for _, s in good):
        raise BadInput("no depth scenario replaces a layer at score >= 0.99: there is nothing to learn which layers "
                       "to replace", hint="collect on more queries, or with a lower --threshold")
    g_rows = torch.tensor([i for i, _ in good], dtype=torch.long)
    g_z = heads.indicator([s for _, s in good], count)
    pairs = [(i, w, lo) for i, r in enumerate(rows) for w, lo in heads.preference_pairs(r)]
    p_rows = torch.tensor([i for i, _, _ in pairs], dtype=torch.long)
    z_w, z_l = heads.indicator([w for _, w, _ in pairs], count), heads.indicator([lo for _, _, lo in pairs], count)
    layer_head = make_head(x.shape[1], cfg.hidden, count)
    ratio_head = make_head(x.shape[1], cfg.hidden, 2)
    params = [*layer_head.parameters(), *ratio_head.parameters()]
    curve: list[dict] = []
    ratio = (EPS_END / EPS_START) ** (1.0 / max(1, cfg.steps - 1))

    def fbc(step: int):
        mu, _ = heads.split_ratio(ratio_head(x[g_rows]))
        return heads.fbc_loss(layer_head(x[g_rows]), mu, g_z, eps=EPS_START * ratio ** (step - 1))

    def log_pis():
        logits = layer_head(x[p_rows])
        mu, log_std = heads.split_ratio(ratio_head(x[p_rows]))
        return (heads.set_log_prob(logits, mu, log_std, z_w), heads.set_log_prob(logits, mu, log_std, z_l),
                logits, mu)

    layer_head.train()
    ratio_head.train()
    adam_stage(params, "depth fbc", fbc, cfg, curve, progress)
    if method in ("dpo", "orpo") and not pairs:
        raise BadInput(f"no pair of layer sets of one query differs in score or size: {method} has nothing to learn "
                       "from", hint="fit with --method fbc")
    if method == "dpo":
        with torch.no_grad():
            ref_w, ref_l, _, _ = log_pis()
        adam_stage(params, "depth dpo", lambda step: heads.dpo_loss(*log_pis()[:2], ref_w, ref_l, beta=cfg.beta),
                   cfg, curve, progress)
    elif method == "orpo":
        def orpo(step: int):
            lp_w, lp_l, logits, mu = log_pis()
            return heads.orpo_loss(lp_w, lp_l, logits, mu, z_w, lam=cfg.lam)

        adam_stage(params, "depth orpo", orpo, cfg, curve, progress)
    return layer_head.eval(), ratio_head.eval(), curve
