"""Short tasks -> a Python function, checked by hidden test cases run in a sandboxed subprocess.

The sandbox: a fresh ``python -I`` in an empty temp dir, a CPU-time and memory
limit, a wall-clock timeout, and an audit hook (which code cannot remove) that
refuses sockets, subprocesses and opening files outside the temp dir.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import tempfile
import textwrap

FAMILIES = [
    ("add_{k}", "x", "returns x plus {k}", "return x + {k}", lambda k: [((i,), i + k) for i in (0, 3, -7, 41)]),
    ("times_{k}", "x", "returns x multiplied by {k}", "return x * {k}", lambda k: [((i,), i * k) for i in (0, 2, -5, 13)]),
    ("minus_{k}", "x", "returns x minus {k}", "return x - {k}", lambda k: [((i,), i - k) for i in (0, 9, -2, 50)]),
    ("is_multiple_of_{k}", "n", "returns True if n is divisible by {k}, else False", "return n % {k} == 0",
     lambda k: [((i,), i % k == 0) for i in (0, k, k + 1, 3 * k, 7)]),
    ("repeat_{k}", "s", "returns the string s repeated {k} times", "return s * {k}",
     lambda k: [(("ab",), "ab" * k), (("",), ""), (("xyz",), "xyz" * k)]),
    ("first_{k}", "s", "returns the first {k} characters of the string s", "return s[:{k}]",
     lambda k: [(("abcdefghij",), "abcdefghij"[:k]), (("hi",), "hi"[:k]), (("python code",), "python code"[:k])]),
    ("sum_plus_{k}", "xs", "returns the sum of the list xs plus {k}", "return sum(xs) + {k}",
     lambda k: [(([1, 2, 3],), 6 + k), (([],), k), (([-4, 10],), 6 + k)]),
    ("count_above_{k}", "xs", "returns how many numbers in the list xs are greater than {k}",
     "return sum(1 for x in xs if x > {k})",
     lambda k: [(([1, k, k + 1, k + 5],), 2), (([],), 0), (([k - 1, k + 2],), 1)]),
]

HARNESS = textwrap.dedent('''
    import json, os, resource, sys
    tmp = os.getcwd()
    resource.setrlimit(resource.RLIMIT_CPU, (5, 5))
    resource.setrlimit(resource.RLIMIT_AS, (512 << 20, 512 << 20))
    def _guard(event, args):
        if event.startswith(("socket.", "subprocess.", "os.exec", "os.fork", "os.posix_spawn", "os.system", "pty.")):
            raise PermissionError("sandbox: " + event + " is not allowed")
        if event == "open" and isinstance(args[0], (str, bytes)):
            path = os.path.realpath(args[0] if isinstance(args[0], str) else args[0].decode())
            mode = args[1] if len(args) > 1 and isinstance(args[1], str) else "r"
            if not path.startswith(tmp) and any(c in mode for c in "wax+"):
                raise PermissionError("sandbox: writing outside the temp dir is not allowed")
            if not path.startswith(tmp) and not path.startswith(sys.prefix) and not path.startswith(sys.base_prefix):
                raise PermissionError("sandbox: reading outside the temp dir is not allowed")
    sys.addaudithook(_guard)
    cases = json.loads(sys.argv[1])
    namespace = {}
    exec(compile(open("solution.py").read(), "solution.py", "exec"), namespace)
    fn = namespace[sys.argv[2]]
    ok = all(fn(*args) == expected for args, expected in cases)
    print("PASS" if ok else "FAIL")
''')


def generate(rng: random.Random) -> dict:
    name_t, arg, desc_t, body_t, cases_t = rng.choice(FAMILIES)
    k = rng.randint(2, 60)
    name = name_t.format(k=k)
    prompt = f"Write a Python function `{name}({arg})` that {desc_t.format(k=k)}."
    solution = f"def {name}({arg}):\n    {body_t.format(k=k)}"
    cases = [[list(args), expected] for args, expected in cases_t(k)]
    return {
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": solution}],
        "check": {"function": name, "tests": cases},
    }


def extract_code(output: str) -> str:
    """The code of a reply: a fenced block if there is one, else the text from the first ``def``."""
    fenced = re.search(r"```(?:python)?\n(.*?)```", output, re.S)
    if fenced:
        return fenced.group(1)
    start = output.find("def ")
    return output[start:] if start >= 0 else output


def run_sandboxed(source: str, function: str, tests: list, *, timeout: float = 10.0) -> bool:
    with tempfile.TemporaryDirectory(prefix="llora-code-") as tmp:
        with open(f"{tmp}/solution.py", "w") as f:
            f.write(source)
        with open(f"{tmp}/harness.py", "w") as f:
            f.write(HARNESS)
        try:
            proc = subprocess.run(
                [sys.executable, "-I", "harness.py", json.dumps(tests), function],
                cwd=tmp, capture_output=True, text=True, timeout=timeout,
                env={"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp},
            )
        except subprocess.TimeoutExpired:
            return False
        return proc.returncode == 0 and proc.stdout.strip().endswith("PASS")


def check(row: dict, output: str) -> bool:
    return run_sandboxed(extract_code(output), row["check"]["function"], row["check"]["tests"])
