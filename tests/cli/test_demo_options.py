"""`llora demo`'s options: the command's defaults are the library's (DemoOptions)."""

from __future__ import annotations

import inspect


def test_demo_cli_defaults_are_the_libraries():
    from llora_cli.cli.demo import demo
    from llora_cli.demo import DemoOptions

    params = inspect.signature(demo).parameters
    opts = DemoOptions()
    for field in ("adapter_steps", "modifier_steps", "rows", "eval_rows", "compress_method", "compress_eval_rows",
                  "router_rows", "routed_requests"):
        assert params[field].default == getattr(opts, field), field
