"""Exhaustive tests of the sufficiency search against the linear-scan oracle."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import pytest

from palign_ray.judge.search import (
    SearchState,
    binary_probe_bound,
    fixed_ratio_k,
    kary_cuts,
    kary_round_bound,
    majority,
)


def run(state: SearchState, judge: Callable[[int], bool]) -> tuple[SearchState, int]:
    """Drive a state to completion; returns it and the number of rounds (engine calls) used."""
    rounds = 0
    while not state.done:
        probes = state.next_probes()
        assert probes, "not done but nothing to probe"
        assert len(set(probes)) == len(probes) and all(1 <= k <= state.n for k in probes)
        rounds += 1
        for k in probes:
            state.record(k, judge(k), score=1.0 if judge(k) else 0.0)
    assert state.next_probes() == []
    return state, rounds


def oracle(n: int, judge: Callable[[int], bool]) -> tuple[int, bool]:
    """Shortest k in 1..n judged ENOUGH, else (n, False)."""
    for k in range(1, n + 1):
        if judge(k):
            return k, True
    return n, False


def test_bounds_helpers():
    assert [binary_probe_bound(n) for n in (1, 2, 3, 4, 7, 8, 12)] == [
        math.ceil(math.log2(n + 1)) for n in (1, 2, 3, 4, 7, 8, 12)
    ]
    for n in range(1, 50):
        for k in (1, 2, 3, 5):
            assert kary_round_bound(n, k) == math.ceil(math.log(n + 1, k + 1) - 1e-12)


@pytest.mark.parametrize("n", range(1, 13))
def test_monotone_patterns_all_modes_agree_with_linear(n):
    for t in range(1, n + 2):  # ENOUGH iff k >= t; t = n+1: never ENOUGH

        def judge(k: int, t: int = t) -> bool:
            return k >= t

        expected = oracle(n, judge)
        lin, lin_rounds = run(SearchState(n, "linear"), judge)
        assert (lin.result().k, lin.result().is_sufficient) == expected
        assert lin_rounds == 1 and lin.result().num_probes == n
        assert not lin.result().non_monotone

        b, b_rounds = run(SearchState(n, "binary"), judge)
        r = b.result()
        assert (r.k, r.is_sufficient) == expected, (n, t)
        assert r.num_probes == b_rounds <= binary_probe_bound(n)
        assert not r.non_monotone
        for kk in (1, 2, 3, 4):
            s, rounds = run(SearchState(n, "kary", kary_k=kk), judge)
            rk = s.result()
            assert (rk.k, rk.is_sufficient) == expected, (n, t, kk)
            assert rounds == rk.num_rounds <= kary_round_bound(n, kk), (n, t, kk, rounds)
            assert (
                max(len([p for p in rk.trace if p.round == i]) for i in range(1, rounds + 1)) <= kk
            )


def test_binary_is_the_papers_loop():
    """Same probe sequence as the authors' while-loop, on every pattern (monotone or not) for n ≤ 8."""
    for n in range(1, 9):
        for bits in itertools.product((False, True), repeat=n):

            def judge(k: int, bits=bits) -> bool:
                return bits[k - 1]

            lo, hi, best, seq = 1, n, None, []
            while lo <= hi:
                mid = (lo + hi) // 2
                seq.append(mid)
                if judge(mid):
                    best, hi = mid, mid - 1
                else:
                    lo = mid + 1
            s, _ = run(SearchState(n, "binary"), judge)
            assert [p.k for p in s.trace] == seq
            assert s.result().k == (best if best is not None else n)
            assert s.result().is_sufficient == (best is not None)


@pytest.mark.parametrize("mode,kk", [("binary", 1), ("kary", 2), ("kary", 3), ("linear", 1)])
def test_non_monotone_patterns(mode, kk):
    """Any verdict pattern: the kept k was judged ENOUGH (or is the flagged fallback n), and the flag is
    set exactly when the recorded verdicts contradict monotonicity."""
    seen_flag = False
    for n in range(1, 10):
        for bits in itertools.product((False, True), repeat=n):

            def judge(k: int, bits=bits) -> bool:
                return bits[k - 1]

            s, _ = run(SearchState(n, mode, kary_k=kk), judge)
            r = s.result()
            if r.is_sufficient:
                assert judge(r.k) and any(p.k == r.k and p.verdict for p in r.trace)
            else:
                assert r.k == n and not any(p.verdict for p in r.trace)
            contradiction = any(
                a.verdict and not b.verdict and b.k > a.k for a in r.trace for b in r.trace
            )
            assert r.non_monotone == contradiction
            seen_flag |= r.non_monotone
    # binary search never sees a contradiction; kary and linear do on some patterns
    assert seen_flag == (mode != "binary")


def test_linear_flags_the_judge():
    s, _ = run(SearchState(5, "linear"), lambda k: k in (2, 5))
    r = s.result()
    assert r.k == 2 and r.is_sufficient and r.non_monotone and r.num_probes == 5


def test_fixed_ratio_no_probes():
    s = SearchState(10, "fixed_ratio", fixed_ratio=0.25)
    assert s.done and s.next_probes() == []
    r = s.result()
    assert (r.k, r.is_sufficient, r.num_probes, r.num_rounds) == (3, False, 0, 0)
    assert fixed_ratio_k(30, 0.1) == 3  # not 4 from 0.1*30 = 3.0000000000000004
    assert fixed_ratio_k(3, 0.01) == 1 and fixed_ratio_k(7, 1.0) == 7
    with pytest.raises(ValueError, match="fixed_ratio"):
        fixed_ratio_k(5, 0.0)


def test_kary_cuts_spread():
    assert kary_cuts(1, 12, 3) == [4, 7, 10]
    assert kary_cuts(1, 2, 3) == [1, 2]
    assert kary_cuts(5, 4, 3) == []
    for lo, hi, k in itertools.product(range(1, 6), range(1, 20), range(1, 5)):
        cuts = kary_cuts(lo, hi, k)
        assert all(lo <= c <= hi for c in cuts) and len(cuts) <= k and cuts == sorted(set(cuts))


def test_votes_majority_and_trace():
    assert majority([True, True, False]) and not majority([True, False]) and not majority([False])
    with pytest.raises(ValueError):
        majority([])
    s = SearchState(4, "binary")
    (k,) = s.next_probes()
    s.record(k, majority([True, False, True]), score=0.7, votes=[True, False, True])
    assert s.trace[0].votes == (True, False, True) and s.trace[0].score == 0.7


def test_misuse_is_loud():
    with pytest.raises(ValueError, match="at least one sentence"):
        SearchState(0)
    with pytest.raises(ValueError, match="judge.search"):
        SearchState(3, "ternary")  # type: ignore[arg-type]
    s = SearchState(8)
    (k,) = s.next_probes()
    with pytest.raises(ValueError, match="not requested"):
        s.record(k + 1, True)


def test_judge_modules_import_no_heavy_packages():
    import subprocess
    import sys

    code = (
        "import sys, palign_ray.judge.search, palign_ray.judge.prompts, palign_ray.judge.rounds, palign_ray.judge.ingest, palign_ray.cli.stages\n"
        "print(','.join(m for m in ('vllm', 'torch', 'ray', 'deepspeed', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
