"""Pure statistics of a method comparison: per-problem scores, stratified bootstrap CIs, paired tests.

A "stratum" is one benchmark's list of per-problem values; the macro average over benchmarks (the
paper's "Avg" column) is the mean of the strata means, and every resampling here keeps each
problem inside its own benchmark, so a benchmark with 30 problems weighs as much as one with 500.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from palign_ray.metrics import pass_at_k

Strata = Sequence[Sequence[float]]


def correct_by_problem(
    samples: Iterable[Mapping[str, Any]], failed: Iterable[Mapping[str, Any]], num_samples: int
) -> dict[str, dict[str, list[bool]]]:
    """benchmark → problem_id → correctness per sample (in sample order).

    `failed`: problems whose generation failed (evaluate's quarantine rows with a failure reason);
    they count as `num_samples` incorrect samples, as in metrics.json, so the denominator is every problem.
    """
    rows: dict[str, dict[str, list[tuple[int, bool]]]] = {}
    for s in samples:
        rows.setdefault(str(s["benchmark"]), {}).setdefault(str(s["problem_id"]), []).append(
            (int(s["sample_index"]), bool(s["correct"]))
        )
    out = {
        b: {pid: [c for _, c in sorted(v)] for pid, v in by_pid.items()}
        for b, by_pid in rows.items()
    }
    for f in failed:
        out.setdefault(str(f["benchmark"]), {}).setdefault(
            str(f["problem_id"]), [False] * num_samples
        )
    return out


def pass_k_by_problem(correct: Mapping[str, Sequence[bool]], k: int) -> dict[str, float]:
    """Unbiased pass@k of every problem (k=1 is the mean accuracy over its samples, the paper's Pass@1)."""
    return {pid: pass_at_k(len(c), sum(c), k) for pid, c in correct.items()}


def strata_mean(strata: Strata) -> float:
    """Mean of the per-stratum means (empty strata are left out); nan when there is none."""
    means = [sum(s) / len(s) for s in strata if len(s)]
    return sum(means) / len(means) if means else float("nan")


def bootstrap_ci(
    strata: Strata, num_resamples: int, seed: int, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of `strata_mean`, resampling problems with replacement within each stratum."""
    strata = [list(s) for s in strata if len(s)]
    if not strata or num_resamples <= 0:
        return (float("nan"), float("nan"))
    rng = random.Random(seed)
    stats = sorted(
        strata_mean([[s[rng.randrange(len(s))] for _ in s] for s in strata])
        for _ in range(num_resamples)
    )
    return (
        stats[int((1 - level) / 2 * (num_resamples - 1))],
        stats[int((1 + level) / 2 * (num_resamples - 1))],
    )


def paired(a: Mapping[str, float], b: Mapping[str, float]) -> tuple[list[float], list[str]]:
    """a − b over the problems both have (sorted by id), and the ids only one of them has."""
    common = sorted(set(a) & set(b))
    return [a[p] - b[p] for p in common], sorted(set(a) ^ set(b))


def sign_test_p(diffs: Iterable[float]) -> float:
    """Two-sided exact sign test of "a and b are equally likely to win" (ties dropped); 1.0 without any win."""
    wins = [d > 0 for d in diffs if d != 0]
    n, k = len(wins), sum(wins)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(k, n - k) + 1)) / 2**n
    return float(min(1.0, 2 * tail))


EXACT_MAX_NONZERO = 16  # up to 2^16 sign patterns are enumerated; beyond that, Monte Carlo


def sign_flip_p(strata: Strata, num_resamples: int, seed: int) -> float:
    """Two-sided paired permutation p-value of `strata_mean(diffs)`: each problem's difference flips sign at random.

    Exact (all sign patterns of the non-zero differences) when there are at most EXACT_MAX_NONZERO of
    them, else `num_resamples` random patterns with the (hits + 1) / (resamples + 1) correction.
    """
    strata = [list(s) for s in strata if len(s)]
    observed = abs(strata_mean(strata)) if strata else 0.0
    cells = [(i, j) for i, s in enumerate(strata) for j, d in enumerate(s) if d != 0]
    if not cells:
        return 1.0
    eps = 1e-12 * max(1.0, observed)

    def stat(signs: Sequence[int]) -> float:
        flipped = [list(s) for s in strata]
        for (i, j), sign in zip(cells, signs, strict=True):
            flipped[i][j] *= sign
        return abs(strata_mean(flipped))

    if len(cells) <= EXACT_MAX_NONZERO:
        patterns = list(itertools.product((1, -1), repeat=len(cells)))
        return sum(stat(p) >= observed - eps for p in patterns) / len(patterns)
    rng = random.Random(seed)
    hits = sum(
        stat([rng.choice((1, -1)) for _ in cells]) >= observed - eps for _ in range(num_resamples)
    )
    return (hits + 1) / (num_resamples + 1)


def score_cell(strata: Strata, num_resamples: int, seed: int) -> dict[str, Any]:
    """A Table-1 cell: the value, its bootstrap CI and the number of problems."""
    lo, hi = bootstrap_ci(strata, num_resamples, seed)
    return {
        "value": strata_mean(strata),
        "ci95": [lo, hi],
        "num_problems": sum(len(s) for s in strata),
    }


def paired_cell(strata: Strata, num_resamples: int, seed: int, num_unpaired: int) -> dict[str, Any]:
    """A paired-difference cell: mean difference, its bootstrap CI, sign-flip and sign-test p-values."""
    flat = [d for s in strata for d in s]
    lo, hi = bootstrap_ci(strata, num_resamples, seed)
    return {
        "diff": strata_mean(strata),
        "ci95": [lo, hi],
        "p_permutation": sign_flip_p(strata, num_resamples, seed),
        "p_sign_test": sign_test_p(flat),
        "wins": sum(d > 0 for d in flat),
        "losses": sum(d < 0 for d in flat),
        "ties": sum(d == 0 for d in flat),
        "num_problems": len(flat),
        "num_unpaired": num_unpaired,
    }
