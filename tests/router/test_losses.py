"""The router's losses and targets against values computed by hand, and log1mexp's stability."""

from __future__ import annotations

import math

import pytest
import torch

from llora_cli.router import losses as L

# One query, two candidates ["none", "m"], logits [0, ln 3]: pi = softmax = [1/4, 3/4].
LOGITS = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)
PAIR = torch.tensor([[0, 1, 0]])  # row 0: "m" (index 1) beats "none" (index 0)


def test_fbc_is_cross_entropy_to_the_best():
    # -log pi(m) = -ln(3/4) = 0.2876820724517809
    got = L.fbc_loss(LOGITS, torch.tensor([1]))
    assert got.item() == pytest.approx(-math.log(0.75), abs=1e-12)
    assert got.item() == pytest.approx(0.2876820724517809, abs=1e-12)


def test_dpo_against_hand_value():
    # ref = uniform [1/2, 1/2]. margin = (ln 3/4 - ln 1/2) - (ln 1/4 - ln 1/2) = ln 3 = 1.0986122886681098
    # beta 0.1: -log sigmoid(0.10986122886681098) = log(1 + exp(-0.10986...)) = log(1 + 0.8959723) = 0.6397245
    ref = torch.zeros_like(LOGITS)
    got = L.dpo_loss(LOGITS, ref, PAIR, beta=0.1).item()
    assert got == pytest.approx(math.log(1 + math.exp(-0.1 * math.log(3))), abs=1e-12)
    assert got == pytest.approx(0.6397245, abs=1e-7)
    # the policy equal to its reference: margin 0, loss ln 2 whatever beta
    assert L.dpo_loss(LOGITS, LOGITS, PAIR, beta=5.0).item() == pytest.approx(math.log(2), abs=1e-12)


def test_dpo_gradient_leaves_the_reference_alone():
    logits = LOGITS.clone().requires_grad_(True)
    ref = torch.zeros_like(LOGITS, requires_grad=True)
    L.dpo_loss(logits, ref, PAIR).backward()
    assert ref.grad is None and logits.grad[0, 1] < 0 < logits.grad[0, 0]  # pushes "m" up, "none" down


def test_orpo_against_hand_value():
    # NLL of the winner: -ln(3/4) = 0.28768207. odds(m) = (3/4)/(1/4) = 3, odds(none) = 1/3:
    # log odds ratio = ln 3 - (-ln 3) = 2 ln 3 = 2.19722458; -log sigmoid(2 ln 3) = ln(1 + 1/9) = ln(10/9) = 0.10536052
    # lambda 0.1: 0.28768207 + 0.010536052 = 0.29821812
    got = L.orpo_loss(LOGITS, torch.tensor([0]), torch.tensor([1]), PAIR, lam=0.1).item()
    assert got == pytest.approx(-math.log(0.75) + 0.1 * math.log(10 / 9), abs=1e-12)
    assert got == pytest.approx(0.29821812, abs=1e-7)
    # lambda 1.0: 0.28768207 + 0.10536052 = 0.39304259
    assert L.orpo_loss(LOGITS, torch.tensor([0]), torch.tensor([1]), PAIR, lam=1.0).item() == pytest.approx(
        0.39304259, abs=1e-7)


def test_log1mexp_is_stable_near_both_ends():
    # p near 1: log p = -1e-10 -> log(1 - p) = log(1e-10 - 5e-21 + ...) ~ -23.02585093
    x = torch.tensor([-1e-10, -1e-20, -1e-300], dtype=torch.float64)
    got = L.log1mexp(x)
    assert got[0].item() == pytest.approx(math.log(1e-10), rel=1e-9)
    assert got[1].item() == pytest.approx(math.log(1e-20), rel=1e-9)
    assert got[2].item() == pytest.approx(math.log(1e-300), rel=1e-9)
    # naive log(1 - exp(x)) loses everything there: 1 - exp(-1e-20) == 0 in float64
    assert 1 - math.exp(-1e-20) == 0.0
    # p near 0: log p = -50 -> log(1 - e^-50) = -e^-50 (= -1.9287e-22), not 0 from rounding 1 - tiny
    y = L.log1mexp(torch.tensor([-50.0, -800.0], dtype=torch.float64))
    assert y[0].item() == pytest.approx(-math.exp(-50), rel=1e-9) and y[1].item() == 0.0
    # both branches meet at -ln 2: log(1 - 1/2) = -ln 2
    assert L.log1mexp(torch.tensor([-L.LN2], dtype=torch.float64)).item() == pytest.approx(-L.LN2, abs=1e-15)
    # p rounded to exactly 1 (log p = 0): finite, and a finite gradient
    z = torch.tensor([0.0, -1e-3], dtype=torch.float32, requires_grad=True)
    out = L.log_odds(z)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(z.grad).all()


def test_targets_follow_the_tie_rule():
    cands = ["none", "a", "b"]
    # a and b both pass; b with fewer tokens wins; none fails
    o = {"none": {"score": 0, "tokens": 3}, "a": {"score": 1, "tokens": 9}, "b": {"score": 1, "tokens": 5}}
    assert L.best_index(cands, o) == 2
    assert sorted(L.preference_pairs(cands, o)) == [(1, 0), (2, 0), (2, 1)]
    # a tie in score and tokens: the base alone wins
    o = {"none": {"score": 1, "tokens": 5}, "a": {"score": 1, "tokens": 5}, "b": {"score": 0, "tokens": 1}}
    assert L.best_index(cands, o) == 0
    assert sorted(L.preference_pairs(cands, o)) == [(0, 1), (0, 2), (1, 2)]
    # nobody passes: no best, no pairs (two failures are never ordered)
    o = {c: {"score": 0, "tokens": i} for i, c in enumerate(cands)}
    assert L.best_index(cands, o) is None and L.preference_pairs(cands, o) == []
