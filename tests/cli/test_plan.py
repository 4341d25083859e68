"""`llora plan`: memory estimates from headers and the strategy for a given amount of free memory."""

from __future__ import annotations

import pytest

from llora_cli.loading import RUNTIME_OVERHEAD


@pytest.mark.parametrize("memory,strategy", [("20GiB", "full"), ("0.6MiB", "offload")])
def test_plan_strategies(cli, tiny_model_dir, memory, strategy):
    base = cli.json("bases", "add", tiny_model_dir, "--name", "tiny")
    p = cli.json("plan", "tiny", "--memory", memory)
    params = base["metadata"]["architecture"]["num_parameters"]
    assert p["parameters"] == params
    assert p["load_bytes"]["fp32"] == params * 4 + RUNTIME_OVERHEAD
    assert p["load_bytes"]["nf4"] < p["load_bytes"]["bf16"] < p["load_bytes"]["fp32"]
    assert p["strategy"] == strategy and p["merge_peak_bytes"] is None


def test_plan_strategy_thresholds(cli, store, tiny_model_dir):
    from llora_cli.loading import plan_for

    cli.json("bases", "add", tiny_model_dir, "--name", "tiny")
    fp32 = plan_for(store, "tiny", available=10**12, device="cpu").load_bytes
    just = lambda n: int(n / 0.8) + 1  # noqa: E731
    assert plan_for(store, "tiny", available=just(fp32["fp32"]), device="cpu").strategy == "full"
    assert plan_for(store, "tiny", available=just(fp32["bf16"]), device="cpu").strategy == "full-bf16"
    assert plan_for(store, "tiny", available=just(fp32["nf4"]), device="cpu").strategy == "quantized-nf4"
    assert plan_for(store, "tiny", available=just(fp32["nf4"]) - 10, device="cpu").strategy == "offload"
    assert plan_for(store, "tiny", available=just(fp32["bf16"]), device="cuda").strategy == "full"


def test_plan_rejects_bad_memory(cli, tiny_model_dir):
    cli.json("bases", "add", tiny_model_dir, "--name", "tiny")
    result = cli("plan", "tiny", "--memory", "lots")
    assert result.exit_code == 2 and "cannot read memory size" in result.stderr
