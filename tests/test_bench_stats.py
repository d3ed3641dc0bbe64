"""The statistics behind reports, checked against worked examples and on synthetic data."""

from __future__ import annotations

import math
from dataclasses import astuple

import numpy as np
import pytest

from cell_results import cell_result
from thinktree.bench.report import accuracy_ci, paired
from thinktree.bench.stats import (
    bootstrap_ci,
    mcnemar,
    mcnemar_counts,
    paired_bootstrap,
    sign_flip_p,
    unanimous_ci,
)


def test_mcnemar_exact_matches_the_worked_example() -> None:
    # Fagerland, Lydersen & Laake (2013), BMC Med Res Methodol 13:91, airway
    # hyper-responsiveness before/after: discordant pairs 1 and 7, exact p = 0.0703.
    result = mcnemar_counts(1, 7)
    assert result.method == "exact"
    assert result.p_value == pytest.approx(0.0703, abs=5e-5)
    assert result.p_value == 9 / 128  # 2 * (C(8,0) + C(8,1)) / 2^8
    # symmetric in which system is A
    assert mcnemar_counts(7, 1).p_value == result.p_value


def test_mcnemar_chi_square_matches_the_textbook_example() -> None:
    # Agresti, Categorical Data Analysis (2nd ed.), Table 10.1: presidential approval in
    # two surveys of 1600 people, discordant cells 150 and 86.
    result = mcnemar_counts(150, 86)
    assert result.method == "chi-square (continuity-corrected)"
    assert result.statistic == pytest.approx((64 - 1) ** 2 / 236)  # 16.82
    assert result.p_value == pytest.approx(4.11e-5, rel=1e-2)


def test_mcnemar_from_outcomes_counts_only_discordant_pairs() -> None:
    a = [True, True, False, False, True, True]
    b = [True, False, False, True, False, False]
    result = mcnemar(a, b)
    assert (result.a_only, result.b_only) == (3, 1)
    assert result.p_value == pytest.approx(2 * (1 + 4) / 16)
    assert mcnemar([True, False], [True, False]).p_value == 1.0
    with pytest.raises(ValueError, match="length"):
        mcnemar([True], [True, False])


def test_chi_square_tail_is_right_at_the_five_percent_point() -> None:
    # 3.8415 is the 95th percentile of chi-square with one degree of freedom
    assert math.erfc(math.sqrt(3.841458820694124 / 2)) == pytest.approx(0.05)


def test_bootstrap_ci_covers_the_true_accuracy_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(1)
    truth, trials, hits = 0.7, 400, 0
    for trial in range(trials):
        sample = (rng.random(120) < truth).tolist()
        ci = bootstrap_ci(sample, resamples=2000, seed=trial)
        assert ci.low <= ci.estimate <= ci.high
        hits += ci.low <= truth <= ci.high
    coverage = hits / trials
    # the binomial sd of the coverage over 400 trials is about 1.1 points
    assert 0.91 <= coverage <= 0.98, coverage


def test_bootstrap_ci_narrows_with_more_problems_and_is_deterministic() -> None:
    rng = np.random.default_rng(2)
    small = bootstrap_ci((rng.random(20) < 0.5).tolist())
    large = bootstrap_ci((rng.random(2000) < 0.5).tolist())
    assert (large.high - large.low) < (small.high - small.low) / 5
    data = [1, 0, 1, 1, 0]
    assert bootstrap_ci(data, seed=3) == bootstrap_ci(data, seed=3)
    assert bootstrap_ci([1, 1, 1]) == bootstrap_ci([True, True, True])
    assert bootstrap_ci([1, 1, 1]).low == 1.0
    with pytest.raises(ValueError, match="no values"):
        bootstrap_ci([])


def test_unanimous_ci_is_the_exact_binomial_interval() -> None:
    # Clopper-Pearson: 20 of 20 right gives [83.16 %, 100 %], 0 of 4 gives [0, 60.24 %]
    all_right = unanimous_ci(20, True)
    assert (all_right.estimate, all_right.high, all_right.confidence) == (1.0, 1.0, 0.95)
    assert all_right.low == pytest.approx(0.8316, abs=5e-5)
    assert all_right.low**20 == pytest.approx(0.025)  # all 20 right at its bound: 2.5 %
    none_right = unanimous_ci(4, False)
    assert (none_right.estimate, none_right.low) == (0.0, 0.0)
    assert none_right.high == pytest.approx(0.6024, abs=5e-5)
    assert unanimous_ci(200, True).low > unanimous_ci(20, True).low  # more problems, narrower
    with pytest.raises(ValueError, match="no problems"):
        unanimous_ci(0, True)
    with pytest.raises(ValueError, match="confidence"):
        unanimous_ci(5, True, confidence=1.0)


def test_a_reports_accuracy_interval_covers_a_high_accuracy_on_few_problems() -> None:
    """At 95 % on 20 problems, about a third of cells get every problem right: a bootstrap
    interval is then [100-100] and misses the truth, and its coverage falls to about two
    thirds; the report's interval is the exact one there."""
    rng = np.random.default_rng(5)
    truth, trials, hits, unanimous = 0.95, 300, 0, 0
    for trial in range(trials):
        outcomes = (rng.random(20) < truth).tolist()
        found = accuracy_ci(cell_result(outcomes), seed=trial)
        assert found is not None
        estimate, low, high = found
        assert low <= estimate <= high
        hits += low <= truth <= high
        unanimous += all(outcomes)
    assert 70 <= unanimous <= 150  # the case is common (0.95**20: 36 %)
    assert hits / trials >= 0.9, hits / trials
    assert accuracy_ci(cell_result([False] * 4)) == pytest.approx((0.0, 0.0, 0.6024), abs=5e-5)
    assert accuracy_ci(cell_result([True, False, True])) == pytest.approx(
        astuple(bootstrap_ci([1, 0, 1]))[:3]
    )


def test_a_reports_difference_of_cells_that_went_alike_on_every_problem_is_not_zero_wide() -> None:
    """Where A and B went the same way on every problem a bootstrap's interval is [0, 0],
    as though they were known to be equal; the report's bounds the share that could differ."""
    same = paired(cell_result([True, True, False]), cell_result([True, True, False]), "mode")
    assert same is not None
    assert (same.diff, same.mcnemar_p) == (0.0, 1.0)
    assert (same.low, same.high) == pytest.approx((-0.7076, 0.7076), abs=5e-5)  # 1 - 0.025^(1/3)
    many = paired(
        cell_result([True] * 60 + [False] * 40), cell_result([True] * 60 + [False] * 40), "mode"
    )
    assert many is not None and 0 < many.high < same.high
    a, b = [True, True, False, True], [True, False, False, False]
    differ = paired(cell_result(a), cell_result(b), "mode")
    boot = paired_bootstrap(a, b)
    assert differ is not None and (differ.low, differ.high) == (boot.low, boot.high)


def test_paired_bootstrap_false_positive_rate_and_power() -> None:
    rng = np.random.default_rng(4)
    false_positives = 0
    for trial in range(200):
        a = (rng.random(80) < 0.6).tolist()
        b = (rng.random(80) < 0.6).tolist()
        false_positives += paired_bootstrap(a, b, resamples=2000, seed=trial).p_value < 0.05
    assert false_positives / 200 <= 0.10

    easy = rng.random(200)
    right_a = (easy < 0.8).tolist()  # A is right wherever B is, and more often
    right_b = (easy < 0.5).tolist()
    result = paired_bootstrap(right_a, right_b, seed=0)
    assert result.difference == pytest.approx(np.mean(right_a) - np.mean(right_b))
    assert result.low > 0 and result.p_value < 0.001
    assert paired_bootstrap([1, 0, 1], [1, 0, 1]).p_value == 1.0


def test_the_paired_p_value_is_a_permutation_tests_and_never_0_on_few_problems() -> None:
    """Every problem going one way is no evidence on three problems: the share of
    resampled means past zero said p < 0.001 there."""
    assert paired_bootstrap([0, 0, 0], [1, 1, 1]).p_value == 0.25  # 2 of 8 sign patterns
    assert paired_bootstrap([0], [1]).p_value == 1.0
    assert sign_flip_p([1.0, 0.0, -0.5, 2.0]) == 0.5  # 4 of 8 patterns sum as far from 0
    # on right/wrong outcomes it is McNemar's exact test (9 discordant: 7 to 2)
    a = [True] * 7 + [False] * 2 + [True] * 5
    b = [False] * 7 + [True] * 2 + [True] * 5
    assert paired_bootstrap(a, b).p_value == pytest.approx(mcnemar(a, b).p_value)
    # past 16 pairs that differ, from random patterns, and never 0
    many = paired_bootstrap([1] * 40, [0] * 40, resamples=1000).p_value
    assert many == pytest.approx(1 / 1001)
    with pytest.raises(ValueError, match="length"):
        paired_bootstrap([1, 0], [1])
