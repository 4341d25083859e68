"""llora: a catalog, lifecycle guard and runtime for LoRA fine-tuning of open LLMs.

``llora_cli.cli`` holds the Typer commands (parse, one library call, render);
the other modules of this package are the library they call, which returns
dataclasses and rows and never prints. Below both sits ``llora_store``.
"""

__version__ = "0.1.0"
