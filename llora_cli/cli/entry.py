"""Console-script entry point: keeps start-up fast for catalog commands.

Import-time objects (typer, sqlalchemy, sqlmodel: ~150k objects) are created
with the garbage collector off and then frozen, so later collections do not
re-scan them; listing 10,000 artifacts spends ~40 ms less in the collector
(benchmarks/list_10k.py). Collection is enabled again before the command runs,
so long-running commands (training, serving) behave normally.
"""

from __future__ import annotations

import gc
import sys


def main() -> None:
    from llora_cli import fastrun, prefetch

    prefetch.start(sys.argv)  # `llora run` on llama.cpp: the model loads while the imports below run
    code = fastrun.main(sys.argv)  # a plain `llora run` on llama.cpp: no Typer, no ORM (fastrun.py)
    if code is not None:
        sys.exit(code)
    gc.disable()
    try:
        from llora_cli.cli.main import app
    finally:
        gc.freeze()
        gc.enable()
    sys.exit(app())
