"""compare.stats against hand-computed small cases (pure, fast)."""

from __future__ import annotations

import math

import pytest

from palign_ray.compare import stats as S


def test_correct_by_problem_orders_samples_and_counts_failed_problems_as_incorrect():
    samples = [
        {"benchmark": "b", "problem_id": "1", "sample_index": 1, "correct": True},
        {"benchmark": "b", "problem_id": "1", "sample_index": 0, "correct": False},
        {"benchmark": "b", "problem_id": "2", "sample_index": 0, "correct": True},
    ]
    failed = [{"benchmark": "b", "problem_id": "3"}, {"benchmark": "c", "problem_id": "9"}]
    got = S.correct_by_problem(samples, failed, num_samples=2)
    assert got == {
        "b": {"1": [False, True], "2": [True], "3": [False, False]},
        "c": {"9": [False, False]},
    }


def test_pass_k_by_problem_is_the_unbiased_estimator():
    got = S.pass_k_by_problem({"a": [True, False, False], "b": [False] * 3, "c": [True] * 3}, 2)
    # a: 1 - C(2,2)/C(3,2) = 1 - 1/3
    assert got == pytest.approx({"a": 2 / 3, "b": 0.0, "c": 1.0})
    assert S.pass_k_by_problem({"a": [True, False, False]}, 1) == pytest.approx({"a": 1 / 3})


def test_strata_mean_is_the_macro_average():
    assert S.strata_mean([[1.0, 0.0, 0.0, 0.0], [1.0]]) == pytest.approx((0.25 + 1.0) / 2)
    assert S.strata_mean([[], [0.5]]) == 0.5
    assert math.isnan(S.strata_mean([]))


def test_bootstrap_ci_constant_and_bounded():
    assert S.bootstrap_ci([[0.5, 0.5, 0.5]], 200, seed=0) == (0.5, 0.5)
    lo, hi = S.bootstrap_ci([[0.0, 1.0] * 10], 500, seed=0)
    assert 0.0 <= lo < 0.5 < hi <= 1.0
    assert S.bootstrap_ci([[0.0, 1.0] * 10], 500, seed=0) == (lo, hi)  # seeded
    # a stratum resamples only its own problems: the second benchmark stays at 1.0 in every resample
    lo2, hi2 = S.bootstrap_ci([[0.0, 1.0] * 10, [1.0]], 500, seed=0)
    assert 0.5 <= lo2 < 0.75 < hi2 <= 1.0 and hi2 - lo2 == pytest.approx((hi - lo) / 2, abs=0.06)
    assert all(math.isnan(x) for x in S.bootstrap_ci([], 10, 0))


def test_paired_and_unpaired_ids():
    diffs, unpaired = S.paired({"1": 1.0, "2": 0.0, "3": 0.5}, {"2": 1.0, "3": 0.5, "4": 0.0})
    assert diffs == [-1.0, 0.0] and unpaired == ["1", "4"]


def test_sign_test_hand_computed():
    # 3 wins, 1 loss, 1 tie: n=4, P(X<=1) = 5/16, two-sided 10/16
    assert S.sign_test_p([1, 1, 1, -1, 0]) == pytest.approx(10 / 16)
    assert S.sign_test_p([1] * 5) == pytest.approx(2 / 32)
    assert S.sign_test_p([1, -1]) == 1.0
    assert S.sign_test_p([0, 0]) == 1.0


def test_sign_flip_exact_hand_computed():
    # diffs 1,2,3: mean 2; of the 8 sign patterns only +++ and --- reach |mean| >= 2
    assert S.sign_flip_p([[1.0, 2.0, 3.0]], 0, seed=0) == pytest.approx(2 / 8)
    # diffs 1,-1: observed 0, every pattern reaches it
    assert S.sign_flip_p([[1.0, -1.0]], 0, seed=0) == 1.0
    # zeros never flip: [3, 0] → patterns ±3 → both reach 1.5
    assert S.sign_flip_p([[3.0, 0.0]], 0, seed=0) == 1.0
    assert S.sign_flip_p([[0.0, 0.0]], 0, seed=0) == 1.0
    # two strata: means of (1) and (2, 2): observed (1 + 2) / 2 = 1.5; patterns: s1 ±1, s2 mean in {2, 0, 0, -2}
    # |(±1 + m)/2| >= 1.5 only for (+1, +2) and (-1, -2): 2 of 8
    assert S.sign_flip_p([[1.0], [2.0, 2.0]], 0, seed=0) == pytest.approx(2 / 8)


def test_sign_flip_monte_carlo_beyond_exact_limit():
    n = S.EXACT_MAX_NONZERO + 4
    strong = S.sign_flip_p([[1.0] * n], 999, seed=1)
    assert strong == pytest.approx(
        1 / 1000, abs=2e-3
    )  # 2^-19 two-sided: essentially no resample reaches it
    null = S.sign_flip_p([[1.0, -1.0] * (n // 2)], 999, seed=1)
    assert null == 1.0


def test_cells():
    cell = S.score_cell([[1.0, 0.0], [1.0]], 100, 0)
    assert cell["value"] == pytest.approx(0.75) and cell["num_problems"] == 3
    pc = S.paired_cell([[1.0, 2.0, 3.0]], 100, 0, num_unpaired=1)
    assert pc["diff"] == pytest.approx(2.0) and pc["p_permutation"] == pytest.approx(0.25)
    assert pc["p_sign_test"] == pytest.approx(2 / 8) and (pc["wins"], pc["losses"], pc["ties"]) == (
        3,
        0,
        0,
    )
    assert pc["num_unpaired"] == 1 and pc["ci95"][0] <= 2.0 <= pc["ci95"][1]
