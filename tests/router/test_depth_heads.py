"""The depth heads' targets and losses against values computed by hand (seed 002's FBC, DPO and ORPO over layer
sets), and the gradient passing through the soft top-k selection."""

from __future__ import annotations

import math

import pytest
import torch

from llora_cli.router.depth import heads


def _phi(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


ROW = {"depth": {"steps": [{"added": 3, "layers": [3], "score": 1.0},
                           {"added": 1, "layers": [1, 3], "score": 0.995},
                           {"added": 2, "layers": [1, 2, 3], "score": 0.99}]}}


def test_pairs_follow_score_then_more_layers():
    e, a, b, c = frozenset(), frozenset({3}), frozenset({1, 3}), frozenset({1, 2, 3})
    assert set(heads.preference_pairs(ROW)) == {(a, e), (e, b), (e, c), (a, b), (a, c), (b, c)}
    assert heads.good_sets(ROW) == [a, b, c]
    assert heads.good_sets(ROW, good=0.995) == [a, b]
    same = {"depth": {"steps": [{"added": 0, "layers": [0], "score": 0.5}]}}
    assert heads.preference_pairs(same) == [(frozenset(), frozenset({0}))]


@pytest.mark.parametrize("mu,std,k,count", [(0.3, 0.1, 3, 10), (0.3, 0.01, 3, 10), (0.0, 0.2, 5, 10),
                                            (0.9, 0.05, 1, 10), (0.25, 0.5, 0, 4)])
def test_ratio_log_mass_is_the_normal_mass_of_the_ratio_bin(mu, std, k, count):
    want = _phi(((k + 0.5) / count - mu) / std) - _phi(((k - 0.5) / count - mu) / std)
    got = heads.ratio_log_mass(torch.tensor([mu], dtype=torch.float64), torch.tensor([math.log(std)], dtype=torch.float64),
                               torch.tensor([float(k)], dtype=torch.float64), count)
    if want > 1e-300:
        assert got.item() == pytest.approx(math.log(want), rel=1e-6, abs=1e-9)
    assert got.item() <= 0 and math.isfinite(got.item())


def test_set_log_prob_by_hand():
    logits = torch.tensor([[0.0, 2.0, -1.0]], dtype=torch.float64)
    z = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64)
    mu, log_std = torch.tensor([0.5], dtype=torch.float64), torch.tensor([math.log(0.25)], dtype=torch.float64)
    s = [1 / (1 + math.exp(-x)) for x in (0.0, 2.0, -1.0)]
    bern = math.log(s[0]) + math.log(s[1]) + math.log(1 - s[2])
    mass = _phi((2.5 / 3 - 0.5) / 0.25) - _phi((1.5 / 3 - 0.5) / 0.25)
    assert heads.set_log_prob(logits, mu, log_std, z).item() == pytest.approx(bern + math.log(mass), rel=1e-9)


def test_dpo_loss_by_hand():
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    got = heads.dpo_loss(t(-1.0), t(-2.0), t(-1.5), t(-1.5), beta=0.1)
    assert got.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.1))), rel=1e-9)  # 0.644397
    got = heads.dpo_loss(t(-1.0, -3.0), t(-2.0, -1.0), t(-1.0, -1.0), t(-1.0, -1.0), beta=1.0)
    want = (-math.log(1 / (1 + math.exp(-1.0))) - math.log(1 / (1 + math.exp(2.0)))) / 2
    assert got.item() == pytest.approx(want, rel=1e-9)


def test_orpo_loss_by_hand():
    lp_w, lp_l = torch.tensor([math.log(0.5)], dtype=torch.float64), torch.tensor([math.log(0.25)], dtype=torch.float64)
    logits_w = torch.zeros(1, 2, dtype=torch.float64)  # scores 0.5, 0.5
    z_w = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    mu_w = torch.tensor([0.5], dtype=torch.float64)  # = |z_w| / L: no ratio error
    got = heads.orpo_loss(lp_w, lp_l, logits_w, mu_w, z_w, lam=0.2, alpha=1.0)
    # SFT: MSE([.5, .5], [1, 0]) = 0.25; odds: log(1) - log(1/3) = ln 3 -> -log sigmoid(ln 3) = -log(3/4)
    assert got.item() == pytest.approx(0.25 + 0.2 * -math.log(0.75), rel=1e-9)


def test_fbc_loss_terms_and_the_gradient_through_the_selection():
    logits = torch.tensor([[2.0, -1.0, 0.5, -2.0]], dtype=torch.float64, requires_grad=True)
    z = torch.tensor([[1.0, 0.0, 1.0, 0.0]], dtype=torch.float64)
    mu = torch.tensor([0.3], dtype=torch.float64)
    loss = heads.fbc_loss(logits, mu, z, alpha=1.0, eps=0.1)
    from llora_cli.router.depth.topk import soft_topk

    s = torch.sigmoid(logits)
    sel = soft_topk(logits, torch.tensor([2.0], dtype=torch.float64), eps=0.1)
    want = (0.3 - 0.5) ** 2 + ((s - z) ** 2).mean() + ((sel - z) ** 2).mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-9)
    # the selection term has its own gradient: a score pair in the wrong order is pushed apart by it
    wrong = torch.tensor([[0.1, 0.2, 0.0, -2.0]], dtype=torch.float64, requires_grad=True)  # layer 1 above layer 0
    (g_sel,) = torch.autograd.grad(((soft_topk(wrong, torch.tensor([2.0], dtype=torch.float64), eps=0.1) - z) ** 2)
                                   .mean(), wrong)
    assert g_sel[0, 1] > 0 and g_sel[0, 2] < 0  # descent lowers layer 1 and raises layer 2: the top-2 becomes {0, 2}


def test_fbc_fits_a_set_that_hard_topk_then_selects():
    """Heads trained by FBC on one target set per input select it at inference (k from mu, hard top-k)."""
    from llora_cli.router.depth.topk import hard_topk

    torch.manual_seed(0)
    count = 8
    x = torch.randn(2, 16)
    z = torch.zeros(2, count)
    z[0, [1, 5, 6]] = 1.0
    z[1, [0, 2]] = 1.0
    layer_head, ratio_head = torch.nn.Linear(16, count), torch.nn.Linear(16, 2)
    opt = torch.optim.Adam([*layer_head.parameters(), *ratio_head.parameters()], lr=0.05)
    for _ in range(200):
        mu, _ = heads.split_ratio(ratio_head(x))
        loss = heads.fbc_loss(layer_head(x), mu, z)
        opt.zero_grad()
        loss.backward()
        opt.step()
    mu, _ = heads.split_ratio(ratio_head(x))
    ks = [heads.choose_k(m, count) for m in mu.tolist()]
    assert ks == [3, 2]
    assert hard_topk(layer_head(x).detach(), torch.tensor(ks)).float().equal(z)


def test_choose_k():
    assert heads.choose_k(0.26, 30) == 8
    assert heads.choose_k(0.99, 30) == 29 and heads.choose_k(2.0, 30) == 29  # one layer is always kept
    assert heads.choose_k(-0.1, 30) == 0
    import numpy as np

    draws = {heads.choose_k(0.5, 10, std=0.1, rng=np.random.default_rng(s)) for s in range(50)}
    assert len(draws) > 1 and all(0 <= k <= 9 for k in draws)


def test_fbc_loss_with_a_query_that_replaces_nothing():
    """A row with an empty target counts in the ratio and score terms (r = 0, scores toward 0); the soft top-k term
    is the other rows' only."""
    from llora_cli.router.depth.topk import soft_topk

    logits = torch.tensor([[2.0, -1.0, 0.5, -2.0], [0.3, 0.1, -0.4, 1.0]], dtype=torch.float64)
    z = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    mu = torch.tensor([0.3, 0.2], dtype=torch.float64)
    got = heads.fbc_loss(logits, mu, z, alpha=1.0, eps=0.1)
    s = torch.sigmoid(logits)
    sel = soft_topk(logits[:1], torch.tensor([2.0], dtype=torch.float64), eps=0.1)
    want = ((0.3 - 0.5) ** 2 + (0.2 - 0.0) ** 2) / 2 + ((s - z) ** 2).mean() + ((sel - z[:1]) ** 2).mean()
    assert got.item() == pytest.approx(want.item(), rel=1e-9)
    only_empty = heads.fbc_loss(logits[1:], mu[1:], z[1:])
    assert only_empty.item() == pytest.approx(0.2 ** 2 + (s[1] ** 2).mean().item(), rel=1e-9)


def test_fitted_heads_replace_nothing_where_no_layer_was_safe():
    """Queries whose greedy path found no replaceable layer are FBC targets too (k = 0): the ratio head learns 0
    for them and the layers of the others where they can be replaced (before, they were left out and the ratio
    head predicted the others' k for every query)."""
    import numpy as np

    from llora_cli.router.depth.fitting import predict, train_depth_heads
    from llora_cli.router.fit import FitConfig

    count = 10
    rng = np.random.default_rng(0)
    emb = np.concatenate([rng.normal(1.0, 0.1, (6, 8)), rng.normal(-1.0, 0.1, (6, 8))]).astype(np.float32)
    safe = {"depth": {"steps": [{"added": 4, "layers": [4], "score": 1.0},
                                {"added": 5, "layers": [4, 5], "score": 0.995},
                                {"added": 6, "layers": [4, 5, 6], "score": 0.99}]}}
    none = {"depth": {"steps": []}}
    rows = [safe] * 6 + [none] * 6
    layer_head, ratio_head, _ = train_depth_heads(emb, rows, count, "fbc", FitConfig(steps=300))
    got = predict(layer_head, ratio_head, torch.from_numpy(emb), count)
    assert got[:6] == [frozenset({4, 5, 6})] * 6
    assert got[6:] == [frozenset()] * 6
    with pytest.raises(Exception, match="nothing to learn"):
        train_depth_heads(emb, [none] * 12, count, "fbc", FitConfig(steps=5))
