"""Other libraries' progress bars and warnings off, so that stderr carries llora's own messages and progress only;
``LLORA_DEBUG=1`` leaves them all on.

What printed between llora's messages: transformers' "Loading weights" bars (its own tqdm, whose default follows
huggingface_hub's switch), its GGUF loader's "Converting and de-quantizing GGUF tensors" (a plain
``tqdm.auto`` bar, which only tqdm's ``TQDM_DISABLE`` reaches), huggingface_hub's and datasets' bars, and
bitsandbytes' "Failed to load CPU gemm_4bit_forward" (a ``logging`` warning at import, through Python's
last-resort handler). Most of these switches are read once, when the library is imported, so ``quiet_libraries``
sets environment variables and logger levels first (nothing imported: the CLI calls it as it starts, and
accelerate's worker processes inherit the environment); called again where models are loaded, it also turns off
the bars of libraries already imported (library use: benchmarks, tests).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

ENVIRONMENT = {
    "TQDM_DISABLE": "1",  # every tqdm bar (transformers' GGUF loader, datasets, accelerate)
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # huggingface_hub's bars, and transformers' default for its own
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "DATASETS_VERBOSITY": "error",
}
LOGGERS = ("transformers", "huggingface_hub", "datasets", "bitsandbytes", "peft", "accelerate")
WARNING_MODULES = r"(transformers|huggingface_hub|datasets|bitsandbytes|peft|accelerate)(\.|$)"


def debug() -> bool:
    return os.environ.get("LLORA_DEBUG", "") not in ("", "0")


def quiet_libraries() -> None:
    """Switch other libraries' progress bars, log messages below errors and warnings off (not with LLORA_DEBUG=1).
    Cheap and idempotent: call it before a library is imported, and again where models are loaded."""
    if debug():
        return
    for key, value in ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=WARNING_MODULES)
    if "transformers" in sys.modules:
        from transformers.utils import logging as tf_logging

        tf_logging.set_verbosity_error()
        tf_logging.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "datasets" in sys.modules:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
