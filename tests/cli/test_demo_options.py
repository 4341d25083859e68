"""`llora demo`'s options: the command's defaults are the library's (DemoOptions)."""

from __future__ import annotations

import inspect


def test_demo_cli_defaults_are_the_libraries():
    from llora_cli.cli.demo import demo
    from llora_cli.demo import DemoOptions

    params = inspect.signature(demo).parameters
    opts = DemoOptions()
    for field in ("adapter_steps", "modifier_steps", "modifier_learning_rate", "rows", "eval_rows", "compress_method", "compress_eval_rows",
                  "router_rows", "routed_requests"):
        assert params[field].default == getattr(opts, field), field


def test_demo_refuses_bad_training_settings_before_any_work(cli, store):
    r = cli("demo", "--modifier-lr", "0")
    assert r.exit_code == 2 and "--modifier-lr" in r.stderr and "learning_rate" in r.stderr
    r = cli("demo", "--adapter-steps", "-1")
    assert r.exit_code == 2 and "--adapter-steps" in r.stderr and "max_steps" in r.stderr
    assert store.list() == []  # nothing registered: the base is not even added
