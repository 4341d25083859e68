"""A differentiable top-k by entropic optimal transport (Sinkhorn), and the hard top-k used at inference.

Source: Yujia Xie, Hanjun Dai, Minshuo Chen, Bo Dai, Tuo Zhao, Hongyuan Zha, Wei Wei, Tomas Pfister,
"Differentiable Top-k with Optimal Transport", NeurIPS 2020 (arXiv:2002.06504). The ``n`` scores are ``n`` point
masses of weight ``1/n``; they are transported to two anchors, ``y = [0, 1]`` ("left out", "selected"), of mass
``(n - k)/n`` and ``k/n``, at cost ``C_ij = (x_i - y_j)^2``. The entropic plan ``Gamma`` (regularisation
``epsilon``) is found by Sinkhorn's iterations, and the soft indicator of score ``i`` is ``A_i = n * Gamma_i1``, the
share of its mass sent to the "selected" anchor: in ``[0, 1]``, ``sum_i A_i = k``, and ``A -> the hard top-k
indicator`` as ``epsilon -> 0``. Gradients pass through the unrolled iterations (autograd).

Which k: the LARGEST scores go to the anchor ``1``. A port that pairs the "selected" mass with the anchor at 0 (or
that sorts ascending, as seed 002's sketch does) selects the k smallest; ``tests/router/test_depth_topk.py`` checks
which k are chosen.

Here the scores are first mapped to ``[0, 1]`` by their row's min and max (gradients pass through them too, so
autograd gives the derivative of the function actually computed), so the cost does not depend on the scores'
scale; and ``epsilon`` is annealed geometrically from ``eps_start`` to ``eps`` over the iterations, the dual
potentials carried over (epsilon scaling, Schmitzer 2019, "Stabilized Sparse Scaling Algorithms for Entropy
Regularized Transport Problems"), which converges at a small final ``epsilon`` where a cold start would need many
more iterations. The updates are in the log domain (no overflow at small ``epsilon``).
"""

from __future__ import annotations


def soft_topk(scores, k, *, eps: float = 0.1, eps_start: float = 1.0, iters: int = 100):
    """Soft top-k indicators of ``scores``.

    ``scores``: ``[n]`` or ``[batch, n]`` float tensor (float32 or float64); ``k``: a number in ``(0, n)`` or a
    ``[batch]`` tensor of them (real k is allowed: the selected mass is ``k/n``). Returns a tensor of the scores'
    shape and dtype, each row summing to its ``k`` (the last Sinkhorn update fixes the column marginals), each
    entry in ``[0, 1]`` up to the row marginals' residual (measured <= 1.0013 at ``eps=1e-3``, 200 iterations,
    n = 30); near 1 for the k largest scores when ``eps`` is small. Differentiable in ``scores``.

    ``eps`` is in units of the row's score range. The default 0.1 is for training: at 0.05 a score that is
    confidently on the wrong side gets almost no gradient (measured: 8 scores fitted to a 3-of-8 target set by Adam,
    100 steps, stuck with one wrong at 0.05; right at 0.1, 0.2 and 0.5). Use 0.01 or less to look near-hard.
    """
    import math

    import torch

    single = scores.dim() == 1
    x = scores[None] if single else scores
    b, n = x.shape
    kk = torch.as_tensor(k, dtype=x.dtype, device=x.device).reshape(-1).expand(b)
    if bool(((kk <= 0) | (kk >= n)).any()):
        raise ValueError(f"k must be strictly between 0 and n={n}, got {k}")
    lo = x.min(dim=1, keepdim=True).values
    span = (x.max(dim=1, keepdim=True).values - lo).clamp_min(1e-12)
    xn = (x - lo) / span  # [b, n] in [0, 1]
    anchors = torch.tensor([0.0, 1.0], dtype=x.dtype, device=x.device)
    cost = (xn[:, :, None] - anchors[None, None, :]) ** 2  # [b, n, 2]
    log_mu = torch.full((b, n), -math.log(n), dtype=x.dtype, device=x.device)
    log_nu = torch.stack([torch.log((n - kk) / n), torch.log(kk / n)], dim=1)  # [b, 2]
    f = torch.zeros(b, n, dtype=x.dtype, device=x.device)
    g = torch.zeros(b, 2, dtype=x.dtype, device=x.device)
    ratio = (eps / eps_start) ** (1.0 / max(1, iters - 1))
    e = eps_start
    for step in range(iters):
        e = eps_start * ratio ** step if step < iters - 1 else eps
        f = e * log_mu - e * torch.logsumexp((g[:, None, :] - cost) / e, dim=2)
        g = e * log_nu - e * torch.logsumexp((f[:, :, None] - cost) / e, dim=1)
    log_plan = (f[:, :, None] + g[:, None, :] - cost) / e  # log Gamma, [b, n, 2]
    a = n * torch.exp(log_plan[:, :, 1])
    return a[0] if single else a


def hard_topk(scores, k):
    """The top-k indicator at inference: ``scores [n]`` or ``[batch, n]``, ``k`` an int or ``[batch]`` ints in
    ``0..n``. Returns a bool tensor of the scores' shape, True for the k largest scores of each row (ties: the lower
    index first, by a stable descending sort)."""
    import torch

    single = scores.dim() == 1
    x = scores[None] if single else scores
    b, n = x.shape
    kk = torch.as_tensor(k, device=x.device).reshape(-1).expand(b).long()
    if bool(((kk < 0) | (kk > n)).any()):
        raise ValueError(f"k must be in 0..{n}, got {k}")
    order = torch.sort(x, dim=1, descending=True, stable=True).indices  # [b, n]
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=x.device).expand(b, n))
    mask = rank < kk[:, None]
    return mask[0] if single else mask
