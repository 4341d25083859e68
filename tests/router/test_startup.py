"""The router's catalog commands and help never import torch or sentence-transformers (a fresh interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

HEAVY = ("torch", "transformers", "peft", "sentence_transformers", "safetensors.torch", "numpy")


def test_scenarios_and_router_catalog_commands_stay_light(llora_home, store):
    commands = [["scenarios", "list", "--json"], ["scenarios", "list"], ["routers", "list"], ["router", "--help"],
                ["router", "collect", "--help"], ["router", "fit", "--help"], ["router", "eval", "--help"],
                ["router", "distill", "--help"], ["layer-adapters", "list", "--json"]]
    code = textwrap.dedent(f"""
        import json, sys
        from llora_cli.cli.main import app
        codes = []
        for args in {commands!r}:
            try:
                app(args, standalone_mode=False)
                codes.append(0)
            except SystemExit as e:
                codes.append(e.code or 0)
        print(json.dumps({{"codes": codes, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"LLORA_HOME": str(llora_home), "PATH": "/usr/bin:/bin", "COLUMNS": "120"})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"codes": [0] * len(commands), "heavy": []}
