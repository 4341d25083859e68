"""The Sinkhorn top-k (Xie et al. 2020) selects the k LARGEST scores, sums to k, and passes gradients; the hard
top-k used at inference picks the same layers."""

from __future__ import annotations

import pytest
import torch

from llora_cli.router.depth.topk import hard_topk, soft_topk


def test_selects_the_k_largest_scores_not_the_smallest():
    scores = torch.tensor([0.10, 0.90, 0.50, 0.30, 0.70])
    soft = soft_topk(scores, 2, eps=0.01)
    assert soft.sum().item() == pytest.approx(2.0, abs=1e-5)
    assert soft[1].item() > 0.99 and soft[4].item() > 0.99  # 0.9 and 0.7
    assert soft[[0, 2, 3]].max().item() < 0.01
    assert hard_topk(scores, 2).tolist() == [False, True, False, False, True]


def test_soft_topk_agrees_with_hard_topk_on_random_rows_with_per_row_k():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(64, 30, generator=g, dtype=torch.float64)
    k = torch.randint(1, 29, (64,), generator=g)
    soft = soft_topk(scores, k, eps=1e-3, iters=200)
    hard = hard_topk(scores, k)
    assert torch.allclose(soft.sum(1), k.double(), atol=1e-6)
    assert hard.sum(1).tolist() == k.tolist()
    # each row's k largest get the largest soft values: thresholding at the k-th soft value recovers the hard set
    assert torch.equal(hard_topk(soft, k), hard)
    assert ((soft > 0.5) == hard).double().mean().item() > 0.99  # near-hard at eps = 1e-3 (gaps of rand(30) ~1/30)
    # the rows' marginals are met up to Sinkhorn's residual (measured max 1.0013 here), the columns' exactly
    assert (soft >= 0).all() and (soft <= 1.005).all()


def test_scale_and_shift_of_the_scores_do_not_change_the_selection():
    scores = torch.tensor([[3.0, -1.0, 2.0, 0.0]])
    a = soft_topk(scores, 2)
    b = soft_topk(scores * 1000 - 5, 2)
    assert torch.allclose(a, b, atol=1e-5)
    assert hard_topk(scores, 2).tolist() == [[True, False, True, False]]


def test_gradients_flow_through_the_selection():
    scores = torch.tensor([0.10, 0.45, 0.50, 0.30, 0.70], dtype=torch.float64, requires_grad=True)
    soft = soft_topk(scores, 2, eps=0.05)
    soft[1].backward()  # the borderline score 0.45 (3rd largest)
    grad = scores.grad
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert grad[1] > 0 and grad[2] < 0  # raising 0.45 selects it more, raising its rival 0.50 less
    # autograd agrees with finite differences of the unrolled iterations
    x = torch.tensor([0.10, 0.45, 0.50, 0.30, 0.70], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: soft_topk(s, 2, eps=0.05, iters=50), (x,), eps=1e-6, atol=1e-5)


def test_a_layer_head_can_learn_through_it():
    """Scores trained through soft_topk toward a target set end up selecting that set under hard_topk (at the
    default training eps 0.1; at 0.05 this run stays stuck with one layer wrong: vanishing gradients)."""
    torch.manual_seed(0)
    logits = torch.zeros(8, requires_grad=True)
    target = torch.tensor([0, 1, 0, 0, 1, 1, 0, 0], dtype=torch.float32)
    opt = torch.optim.Adam([logits], lr=0.1)
    with torch.no_grad():
        logits.add_(0.01 * torch.randn(8))
    for _ in range(100):
        loss = ((soft_topk(torch.sigmoid(logits), 3, eps=0.1, iters=40) - target) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert hard_topk(logits.detach(), 3).tolist() == target.bool().tolist()


def test_bad_k_is_refused():
    with pytest.raises(ValueError, match="strictly between 0 and n=3"):
        soft_topk(torch.tensor([1.0, 2.0, 3.0]), 3)
    with pytest.raises(ValueError, match="in 0..3"):
        hard_topk(torch.tensor([1.0, 2.0, 3.0]), 4)
    assert hard_topk(torch.tensor([1.0, 2.0, 3.0]), 0).tolist() == [False, False, False]
