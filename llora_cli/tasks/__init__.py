"""Task data the project generates, each kind with an automatic checker.

Rows are chat JSONL: ``{"messages": [...], "check": {...}}`` where ``check``
holds what the checker needs (the expected number, the expected tool call, the
hidden test cases). Generation is deterministic for a seed; the held-out split
is chosen by a hash of the prompt, so it can never share a prompt with train.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass

from llora_cli.tasks import automation, code, instruct, reasoning

KINDS: dict[str, object] = {
    "instruct": instruct,
    "code": code,
    "reasoning": reasoning,
    "automation": automation,
}
TEST_BUCKETS = 10  # one prompt in ten (by hash) belongs to the held-out split


@dataclass(frozen=True)
class Splits:
    train: list[dict]
    test: list[dict]


def is_test_prompt(prompt: str) -> bool:
    return int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16) % TEST_BUCKETS == 0


def make(kind: str, n: int, *, seed: int = 0, n_test: int | None = None) -> Splits:
    """``n`` training rows and ``n_test`` held-out rows (default max(20, n // 10)) of a task kind."""
    module = KINDS[kind]
    n_test = max(20, n // 10) if n_test is None else n_test
    rng = random.Random(f"{kind}:{seed}")
    train: list[dict] = []
    test: list[dict] = []
    seen: set[str] = set()
    attempts = 0
    while len(train) < n or len(test) < n_test:
        attempts += 1
        if attempts > 50 * (n + n_test) + 1000:
            raise ValueError(f"the {kind} generator ran out of distinct prompts at {len(train)} + {len(test)} rows")
        row = module.generate(rng)
        prompt = row["messages"][0]["content"]
        if prompt in seen:
            continue
        seen.add(prompt)
        target = test if is_test_prompt(prompt) else train
        limit = n_test if target is test else n
        if len(target) < limit:
            target.append({**row, "task": kind})
    return Splits(train, test)


def checker(kind: str) -> Callable[[dict, str], bool]:
    """``check(row, output) -> bool`` for a task kind."""
    return KINDS[kind].check
