"""``llora data make intent``: which tool a request calls, or ``none``, as labelled rows for a classifier.

Rows are ``{"text": request, "label": tool name or "none", "task": "intent", "family": ..., "phrasing": i}``. The
requests are the automation task's (``llora_cli.tasks.automation``: 10 tools, each with its phrasings, and several
families of requests no tool serves, whose label is ``none``), worded by the same phrasings and value pools, so a
classifier and the automation modifier are measured on the same kind of requests.

Balanced: row ``i`` of a split takes label ``LABELS[i % 11]``, then a family of that label and one of its phrasings
from the split's pool (so every label has the same number of rows, within one).

Held-out split (``llora_cli.tasks.family_split("automation")``, the automation task's own): the training rows use
every family but the held-out ones, and of each of those families all phrasings but the last; the held-out rows use
the last phrasing of every family and the held-out families whole. The automation task holds out only families of
requests no tool serves, so every label is in both splits, and every held-out request is worded in a way (or asks
for something) the training rows never showed.
"""

from __future__ import annotations

import random

from llora_cli import tasks
from llora_cli.tasks import automation

KIND = "intent"
NONE = "none"
LABELS = [*automation.SIGNATURES, NONE]


def label_of(family: automation.Family) -> str:
    return family.tool or NONE


def make(n: int, *, seed: int = 0, n_test: int | None = None) -> tasks.Splits:
    """``n`` training and ``n_test`` (default ``max(22, n // 10)``) held-out rows, balanced over ``LABELS``, distinct
    texts within and across splits. Deterministic for ``(n, n_test, seed)``; each split has its own random stream.
    ValueError when the phrasings run out of distinct texts."""
    n_test = max(2 * len(LABELS), n // 10) if n_test is None else n_test
    split = tasks.family_split("automation")
    test_pool = {**split.unseen_phrasings, **split.unseen_families}
    seen: set[str] = set()
    test = _fill(n_test, random.Random(f"{KIND}:{seed}:test"), test_pool, seen)
    train = _fill(n, random.Random(f"{KIND}:{seed}:train"), split.train, seen)
    return tasks.Splits(train, test)


def _fill(n: int, rng: random.Random, pool: dict[int, list[int]], seen: set[str]) -> list[dict]:
    by_label: dict[str, list[int]] = {}
    for f in sorted(pool):
        by_label.setdefault(label_of(automation.FAMILIES[f]), []).append(f)
    missing = [x for x in LABELS if x not in by_label]
    if missing:
        raise ValueError(f"no family of the labels {missing} in this split")
    def draw(i: int) -> tuple[str, dict]:
        label = LABELS[i % len(LABELS)]
        family = rng.choice(by_label[label])
        phrasing = rng.choice(pool[family])
        text = tasks.prompt_of(automation.generate(rng, family, phrasing))
        return text, {"text": text, "label": label, "task": KIND, "family": automation.FAMILIES[family].id,
                      "phrasing": phrasing}

    return tasks.distinct(n, draw, KIND, seen)


def check(row: dict, output: str) -> bool:
    """A predicted label is right when it equals the row's label (exact, case-sensitive)."""
    return output == row["label"]
