"""Modifier training defaults (trainconfig.for_kind) and the memorisation warning (trainjob.memorisation_warning)."""

from __future__ import annotations

import pytest

from llora_cli.trainconfig import MODIFIER_DEFAULTS, TrainConfig, for_kind, load_config
from llora_cli.trainjob import memorisation_warning


def test_modifier_takes_the_modifier_defaults():
    cfg = for_kind(load_config(None, []), "modifier")
    assert (cfg.r, cfg.alpha, cfg.learning_rate, cfg.lr_scheduler) == (16, 32.0, 1e-3, "cosine")
    assert (cfg.warmup_ratio, cfg.batch_size, cfg.max_steps, cfg.max_seq_len) == (0.05, 8, 100, 256)
    assert all(getattr(cfg, k) == v for k, v in MODIFIER_DEFAULTS.items())


def test_keys_the_user_sets_win_and_adapters_keep_the_general_defaults():
    cfg = for_kind(load_config(None, ["learning_rate=3e-4", "max_steps=20"]), "modifier")
    assert (cfg.learning_rate, cfg.max_steps, cfg.batch_size) == (3e-4, 20, 8)
    assert for_kind(load_config(None, []), "adapter") == TrainConfig()
    assert TrainConfig().learning_rate == 2e-4 and TrainConfig().max_steps is None
    # epochs set by the user: no step cap, the epochs decide
    cfg = for_kind(load_config(None, ["epochs=2"]), "modifier")
    assert cfg.max_steps is None and cfg.epochs == 2 and cfg.learning_rate == 1e-3
    # applying it twice changes nothing (plan() and train() both apply it)
    once = for_kind(load_config(None, ["r=8"]), "modifier")
    assert for_kind(once, "modifier") == once and once.r == 8


def _points(*pairs):
    return [{"step": s, "token_accuracy": a} for s, a in pairs]


def test_memorised_when_loss_near_zero_and_heldout_flat():
    losses = [1.1, 0.6, 0.2] + [0.03] * 10  # last five average 0.03
    heldout = _points((38, 0.80), (75, 0.842), (112, 0.845), (150, 0.846))  # +0.4 points over the second half
    warning = memorisation_warning(losses, heldout)
    assert warning is not None
    assert "training loss 0.030 is near zero" in warning
    assert "84.2% at step 75 -> 84.6% at step 150" in warning and "max_steps=75" in warning


@pytest.mark.parametrize("losses,heldout,why", [
    ([1.0] + [0.03] * 5, _points((75, 0.80), (150, 0.83)), "held-out still improving (+3 points)"),
    ([1.0] + [0.20] * 5, _points((75, 0.84), (150, 0.84)), "loss 0.20 is not near zero"),
    ([1.0, 0.04, 0.04, 0.04, 0.04, 0.10], _points((75, 0.84), (150, 0.84)), "last five average 0.052"),
    ([1.0] + [0.01] * 5, _points((150, 0.84)), "one held-out point: no trend"),
    ([], _points((75, 0.84), (150, 0.84)), "no loss logged"),
])
def test_no_warning_otherwise(losses, heldout, why):
    assert memorisation_warning(losses, heldout) is None, why


def test_falling_heldout_accuracy_counts_as_flat_and_thresholds_are_parameters():
    heldout = _points((30, 0.90), (60, 0.88), (90, 0.85), (120, 0.84))
    assert "90.0% at step 30" not in memorisation_warning([0.02] * 5, heldout)  # the middle is step 60
    assert "88.0% at step 60 -> 84.0% at step 120" in memorisation_warning([0.02] * 5, heldout)
    assert memorisation_warning([0.08] * 5, heldout) is None
    assert memorisation_warning([0.08] * 5, heldout, near_zero=0.1) is not None
    gaining = _points((60, 0.80), (120, 0.82))
    assert memorisation_warning([0.02] * 5, gaining) is None
    assert memorisation_warning([0.02] * 5, gaining, flat=0.05) is not None
