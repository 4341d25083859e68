"""stderr of model commands carries llora's own messages and progress only: transformers' and tqdm's bars, library
warnings and bitsandbytes' log lines are off unless LLORA_DEBUG=1 (llora_cli/quiet.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

FOREIGN = ("Loading weights", "Converting and de-quantizing GGUF tensors", "it/s]", "Warning", "warnings.warn",
           "gemm_4bit_forward")


def llora(home: Path, *args: str, debug: bool = False) -> subprocess.CompletedProcess:
    env = {"LLORA_HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "COLUMNS": "200"}
    if debug:
        env["LLORA_DEBUG"] = "1"
    exe = str(Path(sys.executable).with_name("llora"))
    proc = subprocess.run([exe, *args], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_model_commands_print_only_llora_messages(tiny_model_dir, tmp_path):
    from llora_cli.ggufwrite import write_gguf

    gguf = tmp_path / "tiny.gguf"
    write_gguf(tiny_model_dir, gguf, "gguf-q8_0")
    home = tmp_path / "home"
    err = llora(home, "bases", "add", str(gguf), "--name", "tiny").stderr  # transformers' GGUF loader
    assert "added base 'tiny'" in err
    llora(home, "data", "make", "automation", "--n", "16", "--name", "auto")
    err += llora(home, "train", "--base", "tiny", "--data", "auto", "--kind", "modifier", "--domain", "automation",
                 "--name", "m", "max_steps=1").stderr
    assert "trained modifier 'm'" in err
    err += llora(home, "eval", "m", "--data", "auto", "--limit", "1").stderr
    assert not [line for line in err.splitlines() if any(f in line for f in FOREIGN)], err
    # the same conversion with LLORA_DEBUG=1 shows transformers' own bars: the check above can fail
    loud = llora(tmp_path / "loud", "bases", "add", str(gguf), "--name", "tiny", debug=True).stderr
    assert "Converting and de-quantizing GGUF tensors" in loud and "Loading weights" in loud


def test_bitsandbytes_warnings_are_off_unless_debugging():
    """bitsandbytes logs "Failed to load CPU gemm_4bit_forward" at import on CPUs with AVX512-BF16 (not every
    machine): its logger, after the import, is below the CLI's threshold; with LLORA_DEBUG=1 it prints."""
    code = ("import logging, llora_cli.cli, bitsandbytes; "
            "logging.getLogger('bitsandbytes.backends.cpu.ops').warning('Failed to load CPU gemm_4bit_forward')")
    for debug, expected in (("", False), ("1", True)):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={"PATH": "/usr/bin:/bin", "LLORA_DEBUG": debug})
        assert proc.returncode == 0, proc.stderr
        assert ("gemm_4bit_forward" in proc.stderr) is expected, proc.stderr
