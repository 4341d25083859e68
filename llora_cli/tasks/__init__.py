"""Task data the project generates, each kind with an automatic checker.

Rows are chat JSONL: ``{"messages": [...], "check": {...}}`` where ``check``
holds what the checker needs (the expected number, the expected tool call, the
hidden test cases); ``task``, ``family`` and ``phrasing`` say where a row came from.

The held-out split is a family-level split, fixed for all seeds. In a kind with
``FAMILIES`` (reasoning, code, automation), every fifth family (index 4, 9, 14, ...
in the module's list) is held out whole, and of every other family its last
phrasing is held out: ``make`` fills train only from the remaining (family,
phrasing) pairs and the held-out split only from the held-out ones, so a test
prompt is worded in a way, or poses a problem, that training never showed. The
held-out rows alternate between unseen families and unseen phrasings of seen
families. Kinds without families (instruct) keep the old rule: a prompt is
held out iff its sha256 hash is 0 mod 10.
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
TEST_BUCKETS = 10  # instruct: one prompt in ten (by hash) belongs to the held-out split
HELD_OUT_FAMILY_EVERY = 5  # families 4, 9, 14, ... are held out whole


@dataclass(frozen=True)
class Splits:
    train: list[dict]
    test: list[dict]


@dataclass(frozen=True)
class FamilySplit:
    """(family index, phrasing index) pairs per split, grouped by family."""

    train: dict[int, list[int]]
    unseen_families: dict[int, list[int]]  # held-out families, all their phrasings
    unseen_phrasings: dict[int, list[int]]  # the held-out phrasing of each training family


def family_split(kind: str) -> FamilySplit:
    train: dict[int, list[int]] = {}
    unseen_families: dict[int, list[int]] = {}
    unseen_phrasings: dict[int, list[int]] = {}
    for i, fam in enumerate(KINDS[kind].FAMILIES):
        n = len(fam.phrasings)
        if i % HELD_OUT_FAMILY_EVERY == HELD_OUT_FAMILY_EVERY - 1:
            unseen_families[i] = list(range(n))
        else:
            train[i], unseen_phrasings[i] = list(range(n - 1)), [n - 1]
    return FamilySplit(train, unseen_families, unseen_phrasings)


def is_test_prompt(prompt: str) -> bool:
    return int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16) % TEST_BUCKETS == 0


def prompt_of(row: dict) -> str:
    """The last user message of a row (automation rows start with a system prompt)."""
    return [m for m in row["messages"] if m["role"] == "user"][-1]["content"]


def make(kind: str, n: int, *, seed: int = 0, n_test: int | None = None, all_families: bool = False) -> Splits:
    """``n`` training rows and ``n_test`` held-out rows (default max(20, n // 10)) of a task kind.

    Each split has its own random stream, so the held-out rows of a seed do not depend on ``n``. With
    ``all_families`` (kinds with ``FAMILIES`` only) training draws from every family and phrasing, the held-out ones
    too, and there is no held-out split (``n_test`` must be 0 or None): data for a modifier users will run, to be
    evaluated on rows written apart. ValueError otherwise.
    """
    module = KINDS[kind]
    if all_families:
        if not hasattr(module, "FAMILIES"):
            raise ValueError(f"the {kind} generator has no families")
        if n_test:
            raise ValueError("with every family in training there is no held-out split (n_test must be 0)")
        n_test = 0
    n_test = max(20, n // 10) if n_test is None else n_test
    if not hasattr(module, "FAMILIES"):
        return _make_by_hash(kind, module, n, seed, n_test)
    split = family_split(kind)
    pool = ({i: list(range(len(fam.phrasings))) for i, fam in enumerate(module.FAMILIES)} if all_families
            else split.train)
    train = _fill(kind, module, n, random.Random(f"{kind}:{seed}:train"), [pool])
    test = _fill(kind, module, n_test, random.Random(f"{kind}:{seed}:test"),
                 [split.unseen_families, split.unseen_phrasings])
    return Splits(train, test)


def _fill(kind: str, module, n: int, rng: random.Random, pools: list[dict[int, list[int]]]) -> list[dict]:
    """``n`` rows with distinct prompts; row i draws a family of ``pools[i % len(pools)]``, then one of its
    phrasings there (families weigh the same whatever their number of phrasings)."""
    def draw(i: int) -> tuple[str, dict]:
        pool = pools[i % len(pools)]
        family = rng.choice(sorted(pool))
        phrasing = rng.choice(pool[family])
        row = module.generate(rng, family, phrasing)
        return prompt_of(row), {**row, "task": kind, "family": module.FAMILIES[family].id, "phrasing": phrasing}

    return distinct(n, draw, kind)


def distinct(n: int, draw: Callable[[int], tuple[str, dict]], kind: str, seen: set[str] | None = None) -> list[dict]:
    """``n`` rows, row ``i`` from ``draw(i) -> (text, row)``, redrawn while its text is in ``seen`` (texts drawn
    so far, plus any given). ValueError after ``50 n + 1000`` draws: the ``kind`` generator ran out of texts."""
    seen = set() if seen is None else seen
    rows: list[dict] = []
    attempts = 0
    while len(rows) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"the {kind} generator ran out of distinct prompts at {len(rows)} rows")
        text, row = draw(len(rows))
        if text not in seen:
            seen.add(text)
            rows.append(row)
    return rows


def _make_by_hash(kind: str, module, n: int, seed: int, n_test: int) -> Splits:
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
        prompt = prompt_of(row)
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
