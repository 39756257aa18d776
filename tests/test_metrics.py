"""pass@k against brute-force enumeration; the paper's conventions; bootstrap; lengths and truncation."""

from __future__ import annotations

import itertools
import math

import pytest

from palign_ray.metrics import ProblemResult, bootstrap_ci, macro_average, pass_at_k, summarize


def _brute_force(labels: tuple[bool, ...], k: int) -> float:
    """Share of k-subsets of the samples that contain at least one correct sample."""
    subsets = list(itertools.combinations(labels, k))
    return sum(any(s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 8))
def test_pass_at_k_matches_brute_force(n: int) -> None:
    for labels in itertools.product([False, True], repeat=n):
        for k in range(1, n + 1):
            assert pass_at_k(n, sum(labels), k) == pytest.approx(_brute_force(labels, k), abs=1e-12)


def test_pass_at_k_edges() -> None:
    assert pass_at_k(3, 0, 3) == 0.0
    assert pass_at_k(3, 1, 1) == pytest.approx(1 / 3)
    assert pass_at_k(3, 1, 3) == 1.0
    assert pass_at_k(200, 1, 100) == pytest.approx(0.5)
    for bad in [(3, 4, 1), (3, 1, 0), (3, 1, 4), (3, -1, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)


def _p(
    pid: str, *labels: int, tokens: tuple[int, ...] = (), finish: tuple[str, ...] = ()
) -> ProblemResult:
    return ProblemResult(
        pid, tuple(bool(x) for x in labels), num_tokens=tokens, finish_reasons=finish
    )


def test_summarize_paper_conventions() -> None:
    probs = [_p("a", 1, 0, 0), _p("b", 0, 0, 0), _p("c", 1, 1, 1), _p("d", 0, 1, 0)]
    m = summarize(probs, bootstrap_samples=200, seed=1)
    assert m["num_problems"] == 4 and m["num_samples"] == 3 and m["num_generations"] == 12
    assert m["mean_accuracy"] == pytest.approx((1 / 3 + 0 + 1 + 1 / 3) / 4)
    assert m["pass@k"]["1"] == pytest.approx(
        m["mean_accuracy"]
    )  # pass@1 = mean per-sample accuracy
    assert m["pass@n_any_correct"] == pytest.approx(3 / 4)
    assert m["pass@k"]["3"] == pytest.approx(3 / 4)  # pass@n = any of n correct
    assert m["pass@k"]["2"] == pytest.approx((2 / 3 + 0 + 1 + 2 / 3) / 4)
    assert m["first_sample_accuracy"] == pytest.approx(2 / 4)
    lo, hi = m["pass@k_ci95"]["3"]
    assert 0.0 <= lo <= 0.75 <= hi <= 1.0


def test_summarize_lengths_and_truncation() -> None:
    probs = [
        _p("a", 1, 0, tokens=(10, 30), finish=("stop", "length")),
        _p("b", 0, 0, tokens=(20, 40), finish=("stop", "length")),
    ]
    m = summarize(probs, bootstrap_samples=0)
    assert m["mean_generation_tokens"] == 25
    assert m["mean_generation_tokens_correct"] == 10
    assert m["mean_generation_tokens_incorrect"] == 30
    assert m["num_truncated"] == 2 and m["truncation_rate"] == 0.5
    assert math.isnan(m["pass@k_ci95"]["1"][0])


def test_summarize_uneven_sample_counts_uses_the_smallest() -> None:
    m = summarize([_p("a", 1, 0, 1), _p("b", 0, 1)], bootstrap_samples=0)
    assert list(m["pass@k"]) == ["1", "2"]
    assert m["pass@k"]["1"] == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_failed_problems_are_incorrect_not_dropped() -> None:
    """One correct and one failed problem: pass@1 is 0.5, not 1.0; the failure is counted and rated."""
    m = summarize(
        [_p("a", 1, 1), ProblemResult("b", (False, False), failed="generation_failed")],
        bootstrap_samples=0,
    )
    assert m["num_problems"] == 2 and m["num_graded_problems"] == 1 and m["num_samples"] == 2
    assert (
        m["pass@k"] == {"1": 0.5, "2": 0.5}
        and m["mean_accuracy"] == 0.5
        and m["first_sample_accuracy"] == 0.5
    )
    assert (
        m["num_failed_problems"] == 1
        and m["failed_problem_rate"] == 0.5
        and m["failed_reasons"] == {"generation_failed": 1}
    )
    # a failure without a known sample count, or a problem with no samples at all, is still incorrect
    m = summarize(
        [_p("a", 1, 0), ProblemResult("b", (), failed="prompt_too_long"), ProblemResult("c", ())],
        bootstrap_samples=0,
    )
    assert (
        m["num_problems"] == 3
        and m["num_samples"] == 2
        and m["pass@k"]["1"] == pytest.approx(0.5 / 3)
    )
    assert m["failed_reasons"] == {"no_samples": 1, "prompt_too_long": 1}


def test_bootstrap_is_seeded_and_brackets_the_mean() -> None:
    vals = [
        ((i * 37) % 101) / 101 for i in range(60)
    ]  # many distinct values: quantiles move with the seed
    a = bootstrap_ci(vals, 500, seed=7)
    assert a == bootstrap_ci(vals, 500, seed=7)
    assert a != bootstrap_ci(vals, 500, seed=8)
    assert a[0] < sum(vals) / len(vals) < a[1]
    assert bootstrap_ci([1.0] * 10, 100, seed=0) == (1.0, 1.0)


def test_macro_average() -> None:
    a = summarize([_p("a", 1, 1), _p("b", 0, 0)], bootstrap_samples=0)
    b = summarize([_p("c", 1, 0, 0)], bootstrap_samples=0)
    avg = macro_average({"x": a, "y": b, "empty": summarize([])})
    assert avg["num_benchmarks"] == 2 and avg["num_problems"] == 3
    assert list(avg["pass@k"]) == ["1", "2"]  # only ks every benchmark has
    assert avg["pass@k"]["1"] == pytest.approx((0.5 + 1 / 3) / 2)
    assert avg["mean_accuracy"] == pytest.approx((0.5 + 1 / 3) / 2)
