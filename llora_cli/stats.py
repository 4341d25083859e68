"""Small exact statistics for eval results: the Wilson interval of an accuracy and McNemar's exact test.

Pure functions of counts (no numpy/scipy: neither is needed for these and scipy is not a dependency).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion: ``k`` successes out of ``n`` trials.

    With p = k/n::

        centre    = (p + z²/(2n)) / (1 + z²/n)
        halfwidth = z / (1 + z²/n) * sqrt(p(1-p)/n + z²/(4n²))
        interval  = (centre - halfwidth, centre + halfwidth)

    z = 1.96 gives the 95% interval. Unlike the normal ("Wald") interval it stays inside [0, 1] and
    is not degenerate at k = 0 or k = n (0/10 -> 0.0-27.8%), which matters for the small n of
    held-out splits. Sources: E. B. Wilson, "Probable inference, the law of succession, and
    statistical inference", JASA 22 (1927) 209-212; A. Agresti & B. A. Coull, "Approximate is
    better than 'exact' for interval estimation of binomial proportions", The American
    Statistician 52 (1998) 119-126.
    """
    if n < 1:
        raise ValueError("wilson() needs n >= 1")
    if not 0 <= k <= n:
        raise ValueError(f"wilson() needs 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Accuracy:
    """k of n correct, with the 95% Wilson interval."""

    k: int
    n: int

    @property
    def value(self) -> float:
        return self.k / self.n

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.k, self.n)

    def to_json(self) -> dict:
        lo, hi = self.interval
        return {"k": self.k, "n": self.n, "accuracy": round(self.value, 4),
                "ci95": [round(lo, 4), round(hi, 4)], "ci_method": "wilson"}

    def __str__(self) -> str:
        lo, hi = self.interval
        return f"{self.k}/{self.n} = {self.value:.1%} (95% CI {lo * 100:.1f}-{hi * 100:.1f}%, Wilson)"


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs of a paired comparison.

    ``b``: rows A got right and B got wrong; ``c``: rows B got right and A got wrong (rows both got
    right or both got wrong carry no information about which is better). Under H0 (A and B equally
    accurate) each of the m = b + c discordant rows is A's with probability 1/2, so b ~ Binomial(m, 1/2)
    and the two-sided p-value is::

        p = min(1, 2 * sum_{i=0}^{min(b, c)} C(m, i) / 2^m),   p = 1 when m = 0

    (the doubled smaller tail; the binomial is symmetric at 1/2, so this equals the sum of the
    probabilities of all outcomes no more likely than the observed one). Computed with exact
    integers. Source: Q. McNemar, Psychometrika 12 (1947) 153-157; the exact form is the sign test.
    """
    if b < 0 or c < 0:
        raise ValueError("mcnemar_exact() needs counts >= 0")
    m = b + c
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**m)


@dataclass(frozen=True)
class Paired:
    """Two artifacts' verdicts on the same rows: both accuracies, the difference and McNemar's p."""

    a: Accuracy
    b: Accuracy
    only_a: int  # A right, B wrong
    only_b: int  # B right, A wrong

    @classmethod
    def of(cls, a: list[bool], b: list[bool]) -> "Paired":
        if len(a) != len(b) or not a:
            raise ValueError("a paired comparison needs the same, non-zero number of verdicts on each side")
        only_a = sum(1 for x, y in zip(a, b) if x and not y)
        only_b = sum(1 for x, y in zip(a, b) if y and not x)
        return cls(Accuracy(sum(a), len(a)), Accuracy(sum(b), len(b)), only_a, only_b)

    @property
    def difference(self) -> float:
        return self.a.value - self.b.value

    @property
    def p_value(self) -> float:
        return mcnemar_exact(self.only_a, self.only_b)

    def to_json(self) -> dict:
        return {"a": self.a.to_json(), "b": self.b.to_json(), "difference": round(self.difference, 4),
                "discordant": {"only_a": self.only_a, "only_b": self.only_b},
                "p_value": round(self.p_value, 6), "test": "exact McNemar (two-sided binomial on discordant pairs)"}


def paired_bootstrap(a: list[bool], b: list[bool], *, resamples: int = 2000, seed: int = 0) -> dict:
    """The difference of two accuracies on the same rows, ``mean(a) - mean(b)``, with its 95% percentile
    bootstrap interval over rows resampled in pairs (a row's two verdicts stay together).

    ``a``, ``b``: one verdict per row, same length >= 1. Returns ``{"difference", "ci95": [lo, hi], "resamples",
    "method"}`` (fractions, not percent). Deterministic for a given ``seed`` (``random.Random``). Source: B. Efron &
    R. Tibshirani, "An Introduction to the Bootstrap" (1993), ch. 13 (percentile interval); the paired form as in
    P. Koehn, "Statistical significance tests for machine translation evaluation", EMNLP 2004. Raises ValueError
    for empty or unequal inputs."""
    import random

    if len(a) != len(b) or not a:
        raise ValueError("a paired bootstrap needs the same, non-zero number of verdicts on each side")
    n = len(a)
    d = [int(x) - int(y) for x, y in zip(a, b)]
    rng = random.Random(seed)
    stats = sorted(sum(d[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    lo, hi = stats[int(0.025 * (resamples - 1))], stats[int(math.ceil(0.975 * (resamples - 1)))]
    return {"difference": round(sum(d) / n, 4), "ci95": [round(lo, 4), round(hi, 4)], "resamples": resamples,
            "method": "paired percentile bootstrap"}
