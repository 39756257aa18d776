"""pass@k (unbiased estimator), the paper's conventions, bootstrap intervals, lengths and truncation."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any  # metrics dicts are JSON: values of mixed types


@dataclass(frozen=True)
class ProblemResult:
    """The graded samples of one problem (one entry per sample, in sample order)."""

    problem_id: str
    correct: tuple[bool, ...]
    num_tokens: tuple[int, ...] = ()  # generated tokens per sample (empty when unknown)
    num_chars: tuple[int, ...] = ()
    finish_reasons: tuple[str, ...] = ()
    reasons: tuple[str, ...] = field(default=())  # grading reason codes
    failed: str = ""  # why the problem has no graded samples (e.g. generation_failed); "" = graded

    @property
    def is_failed(self) -> bool:
        return bool(self.failed) or not self.correct


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def bootstrap_ci(
    values: Sequence[float], num_resamples: int, seed: int, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of the mean of per-problem `values`, resampling problems with replacement."""
    if not values or num_resamples <= 0:
        return (float("nan"), float("nan"))
    rng = random.Random(seed)
    n = len(values)
    means = sorted(
        sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(num_resamples)
    )
    lo = means[int((1 - level) / 2 * (num_resamples - 1))]
    hi = means[int((1 + level) / 2 * (num_resamples - 1))]
    return (lo, hi)


def summarize(
    problems: Sequence[ProblemResult], bootstrap_samples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Metrics of one benchmark; pass@k for every k up to the smallest sample count.

    A failed problem (no graded samples, e.g. its prompt was too long) stays in the denominator and
    counts as incorrect in every accuracy, as the paper's numbers do; num_failed_problems and
    failed_problem_rate say how many. Lengths, truncation and reasons describe real samples only.
    """
    if not problems:
        return {"num_problems": 0, "num_samples": 0}
    graded = [p for p in problems if not p.is_failed]
    failed = [p for p in problems if p.is_failed]
    # A failure stands for the samples it never got: its own count if known; at any k it scores 0.
    n_min = min(
        [len(p.correct) for p in graded] or [len(p.correct) for p in failed if p.correct] or [0]
    )
    out: dict[str, Any] = {
        "num_problems": len(problems),
        "num_samples": n_min,
        "num_generations": sum(len(p.correct) for p in graded),
        "num_graded_problems": len(graded),
        "num_failed_problems": len(failed),
        "failed_problem_rate": len(failed) / len(problems),
    }
    pass_k: dict[str, float] = {}
    pass_k_ci: dict[str, list[float]] = {}
    for k in range(1, n_min + 1):
        per_problem = [
            0.0 if p.is_failed else pass_at_k(len(p.correct), sum(p.correct), k) for p in problems
        ]
        pass_k[str(k)] = _mean(per_problem)
        pass_k_ci[str(k)] = list(bootstrap_ci(per_problem, bootstrap_samples, seed + k))
    out["pass@k"] = pass_k
    out["pass@k_ci95"] = pass_k_ci
    # The paper's conventions, spelled out (the estimator gives the same numbers at k=1 and k=n).
    out["mean_accuracy"] = _mean(
        [0.0 if p.is_failed else sum(p.correct) / len(p.correct) for p in problems]
    )
    out["pass@n_any_correct"] = _mean([float(not p.is_failed and any(p.correct)) for p in problems])
    out["first_sample_accuracy"] = _mean(
        [float(not p.is_failed and p.correct[0]) for p in problems]
    )
    out.update(_lengths(graded))
    out["reasons"] = _count([r for p in graded for r in p.reasons])
    out["failed_reasons"] = _count([p.failed or "no_samples" for p in failed])
    return out


def _count(items: Sequence[str]) -> dict[str, int]:
    """Occurrences per item, keys sorted (stable JSON across runs)."""
    return dict(sorted(Counter(items).items()))


def _lengths(problems: Sequence[ProblemResult]) -> dict[str, Any]:
    """Average generation length (tokens and characters), split by correctness, and truncation rate."""
    out: dict[str, Any] = {}
    for unit, attr in (("tokens", "num_tokens"), ("chars", "num_chars")):
        pairs = [
            (n, ok) for p in problems for n, ok in zip(getattr(p, attr), p.correct, strict=False)
        ]
        if pairs:
            out[f"mean_generation_{unit}"] = _mean([n for n, _ in pairs])
            out[f"mean_generation_{unit}_correct"] = _mean([n for n, ok in pairs if ok])
            out[f"mean_generation_{unit}_incorrect"] = _mean([n for n, ok in pairs if not ok])
    reasons = [r for p in problems for r in p.finish_reasons]
    if reasons:
        out["num_truncated"] = sum(r == "length" for r in reasons)
        out["truncation_rate"] = out["num_truncated"] / len(reasons)
    return out


AVERAGED_KEYS = (
    "mean_accuracy",
    "pass@n_any_correct",
    "first_sample_accuracy",
    "truncation_rate",
    "mean_generation_tokens",
    "mean_generation_chars",
    "failed_problem_rate",
)


def macro_average(per_benchmark: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Unweighted mean over benchmarks (the paper's "Avg" column) of pass@k and the scalar metrics."""
    done = {b: m for b, m in per_benchmark.items() if m.get("num_problems")}
    if not done:
        return {"num_benchmarks": 0}
    out: dict[str, Any] = {
        "num_benchmarks": len(done),
        "num_problems": sum(int(m["num_problems"]) for m in done.values()),
        "num_failed_problems": sum(int(m.get("num_failed_problems", 0)) for m in done.values()),
    }
    ks = set.intersection(*(set(m["pass@k"]) for m in done.values()))
    out["pass@k"] = {k: _mean([m["pass@k"][k] for m in done.values()]) for k in sorted(ks, key=int)}
    for key in AVERAGED_KEYS:
        vals = [float(m[key]) for m in done.values() if key in m]
        if len(vals) == len(done):
            out[key] = _mean(vals)
    return out
