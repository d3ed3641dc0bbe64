"""Statistics for comparing runs on the same problems.

- :func:`bootstrap_ci`: a percentile bootstrap interval for a mean over problems.
- :func:`unanimous_ci`: the exact binomial interval for an accuracy of all or none, where
  resampling has nothing to vary.
- :func:`paired_bootstrap`: the difference of two means on the same problems, resampling
  problems (pairs stay together), with an interval and a two-sided p-value.
- :func:`mcnemar`: McNemar's test on paired right/wrong outcomes: the exact binomial test
  when fewer than 25 pairs disagree, else the chi-square test with continuity correction.

Every function is deterministic for a given ``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Below this many discordant pairs McNemar's test is exact (binomial), as usually advised.
EXACT_BELOW = 25
RESAMPLES = 10_000


@dataclass(frozen=True, slots=True)
class Interval:
    """An estimate with its confidence interval."""

    estimate: float
    low: float
    high: float
    confidence: float


@dataclass(frozen=True, slots=True)
class PairedDifference:
    """mean(a) − mean(b) over the same problems, its interval and two-sided p-value."""

    difference: float
    low: float
    high: float
    p_value: float
    pairs: int


@dataclass(frozen=True, slots=True)
class McNemar:
    """McNemar's test: ``a_only`` pairs only A got right, ``b_only`` only B got right."""

    a_only: int
    b_only: int
    statistic: float | None  # chi-square (continuity-corrected); None for the exact test
    p_value: float
    method: str  # "exact" or "chi-square (continuity-corrected)"


def _array(values: Sequence[float] | Sequence[bool] | np.ndarray) -> np.ndarray:
    data = np.asarray(values, dtype=float)
    if data.ndim != 1:
        raise ValueError("expected a flat sequence of numbers")
    return data


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, not {confidence}")


def bootstrap_ci(
    values: Sequence[float] | Sequence[bool],
    *,
    confidence: float = 0.95,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> Interval:
    """The mean of ``values`` with a percentile bootstrap interval (problems resampled)."""
    _check_confidence(confidence)
    data = _array(values)
    if data.size == 0:
        raise ValueError("no values to bootstrap")
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Interval(float(data.mean()), float(low), float(high), confidence)


def unanimous_ci(problems: int, right: bool, *, confidence: float = 0.95) -> Interval:
    """The exact binomial (Clopper–Pearson) interval for ``problems`` all right (``right``)
    or all wrong.

    Resampling problems that all went one way gives them back the same way every time, so
    a bootstrap's interval is the one point, as though the accuracy were known exactly:
    20 of 20 right reads [100–100] where the exact interval is [83–100].
    """
    _check_confidence(confidence)
    if problems <= 0:
        raise ValueError("no problems to bound")
    bound = ((1 - confidence) / 2) ** (1 / problems)
    if right:
        return Interval(1.0, bound, 1.0, confidence)
    return Interval(0.0, 0.0, 1 - bound, confidence)


def paired_bootstrap(
    a: Sequence[float] | Sequence[bool],
    b: Sequence[float] | Sequence[bool],
    *,
    confidence: float = 0.95,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> PairedDifference:
    """mean(a) − mean(b) on the same problems: its interval resamples problems with their
    pairs; its p-value is :func:`sign_flip_p`'s.

    (The share of resampled means on the far side of zero is no p-value: where every pair
    that differs differs one way, it is 0 at any size, "<0.001" for three problems.)
    """
    _check_confidence(confidence)
    x, y = _array(a), _array(b)
    if x.size != y.size:
        raise ValueError(f"paired samples differ in length ({x.size} vs {y.size})")
    if x.size == 0:
        raise ValueError("no pairs to bootstrap")
    diff = x - y
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(resamples, diff.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    p = sign_flip_p(diff, resamples=resamples, seed=seed)
    return PairedDifference(float(diff.mean()), float(low), float(high), p, int(diff.size))


EXACT_FLIPS = 16  # up to this many pairs that differ, every one of the 2**k sign patterns


def sign_flip_p(
    differences: Sequence[float] | np.ndarray, *, resamples: int = RESAMPLES, seed: int = 0
) -> float:
    """The two-sided p-value of a paired permutation test: under "A and B are alike", each
    pair's difference is as likely to have either sign, so p is the share of sign patterns
    whose mean is at least as far from zero as the observed one.

    Exact (every pattern) for up to :data:`EXACT_FLIPS` non-zero differences, else from
    ``resamples`` random patterns, counted as (1 + k) / (1 + resamples) so it is never 0.
    On right/wrong outcomes it is McNemar's exact test; three problems that all go one way
    give 0.25, one gives 1.
    """
    diff = _array(differences)
    diff = diff[diff != 0]  # a zero difference is the same under either sign
    if diff.size == 0:
        return 1.0
    observed = abs(float(diff.sum())) * (1 - 1e-9)  # "as far", not lost to rounding
    if diff.size <= EXACT_FLIPS:
        patterns = np.arange(2**diff.size)[:, None] >> np.arange(diff.size) & 1
        sums = np.abs(np.where(patterns == 1, -diff, diff).sum(axis=1))
        return float(np.mean(sums >= observed))
    rng = np.random.default_rng(seed)
    as_far = 0
    for start in range(0, resamples, _FLIPS_AT_ONCE):  # memory: a batch of patterns at a time
        count = min(_FLIPS_AT_ONCE, resamples - start)
        signs = rng.choice(np.array([-1.0, 1.0]), size=(count, diff.size))
        as_far += int(np.count_nonzero(np.abs(signs @ diff) >= observed))
    return (1 + as_far) / (1 + resamples)


_FLIPS_AT_ONCE = 500


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> McNemar:
    """McNemar's test of whether A and B are right equally often on the same problems."""
    if len(a) != len(b):
        raise ValueError(f"paired outcomes differ in length ({len(a)} vs {len(b)})")
    a_only = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    b_only = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    return mcnemar_counts(a_only, b_only)


def mcnemar_counts(a_only: int, b_only: int) -> McNemar:
    """McNemar's test from the two discordant counts."""
    if a_only < 0 or b_only < 0:
        raise ValueError("discordant counts cannot be negative")
    n = a_only + b_only
    if n == 0:
        return McNemar(a_only, b_only, None, 1.0, "exact")
    if n < EXACT_BELOW:
        k = min(a_only, b_only)
        tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
        return McNemar(a_only, b_only, None, min(1.0, 2 * tail), "exact")
    statistic = (abs(a_only - b_only) - 1) ** 2 / n
    # chi-square with one degree of freedom: P(X > s) = erfc(sqrt(s / 2))
    p = math.erfc(math.sqrt(statistic / 2))
    return McNemar(a_only, b_only, statistic, p, "chi-square (continuity-corrected)")
