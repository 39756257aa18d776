"""The problems stage's screen (issue 26.3): exact duplicates and benchmark overlap, pure logic."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from palign_ray import records as R
from palign_ray.config import Config, EvalConfig
from palign_ray.decontam import (
    benchmark_index,
    build_index,
    exact_key,
    normalise,
    screen,
)

AIME = "Find the number of ordered pairs $(m,n)$ of positive integers such that $m^2 n = 20^{20}$."
OTHER = "A bag holds 3 red and 5 blue marbles. Two are drawn without replacement. What is the probability both are red?"


def _rows(*questions: str) -> list[dict[str, str]]:
    return [{R.PROBLEM_ID: f"p{i}", R.QUESTION: q} for i, q in enumerate(questions)]


def _index(*items: str, name: str = "aime24"):
    return build_index([(name, _rows(*items))], 8)


def test_exact_duplicates_differ_only_in_case_spacing_and_latex_spacing() -> None:
    twin = "find the number of ordered pairs $(m, n)$ of positive\nintegers such that $m^2\\,n = 20^{20}$ ."
    assert exact_key(AIME) == exact_key(twin)
    assert exact_key(AIME) != exact_key(AIME.replace("20^{20}", "20^{21}"))
    assert normalise("A  \\left( x \\right) \\quad B") == "a ( x ) b"
    kept, bad, summary = screen(_rows(AIME, OTHER, twin), dedup=True, index=None, threshold=0.5)
    assert [r[R.PROBLEM_ID] for r in kept] == ["p0", "p1"]
    assert [(b[R.PROBLEM_ID], b[R.REASON], b["duplicate_of"]) for b in bad] == [
        ("p2", "duplicate_question", "p0")
    ]
    assert summary["num_duplicates"] == 1
    kept, _, _ = screen(_rows(AIME, twin), dedup=False, index=None, threshold=0.5)
    assert len(kept) == 2


def test_a_benchmark_item_inside_a_training_problem_is_quarantined_naming_it() -> None:
    wrapped = "Please reason step by step. " + AIME.upper() + " Give the answer mod 1000."
    kept, bad, summary = screen(
        _rows(wrapped, OTHER), dedup=True, index=_index(AIME), threshold=0.5
    )
    assert [r[R.PROBLEM_ID] for r in kept] == ["p1"]
    (q,) = bad
    assert (q[R.REASON], q["matched_benchmark"], q["matched_item"]) == (
        "contaminated",
        "aime24",
        "p0",
    )
    assert "aime24/p0" in q[R.DETAIL] and "8-grams" in q[R.DETAIL]
    assert summary["contaminated_by_benchmark"] == {"aime24": 1}


def test_sharing_a_few_phrases_is_not_contamination() -> None:
    """A problem that shares a stock phrase with an item holds a small share of its n-grams."""
    near = "Find the number of ordered pairs $(m,n)$ of primes with $m + n = 50$."
    match = _index(AIME).match(near)
    assert match is not None and 0 < match.share < 0.5  # it does share some n-grams
    kept, bad, _ = screen(_rows(near), dedup=True, index=_index(AIME), threshold=0.5)
    assert len(kept) == 1 and not bad


def test_a_short_item_matches_where_it_is_contained_whole() -> None:
    index = _index("Compute $2^{10}$.")
    assert index.match("First, compute $2^{10}$. then add one.").share == 1.0
    assert index.match("Compute $3^{10}$.") is None or index.match("Compute $3^{10}$.").share < 1


def test_the_builtin_benchmark_counts_only_a_whole_match() -> None:
    """Templated problems share wording, not numbers (bench/results/2026-12-06-decontam.md)."""
    from palign_ray.builtin import builtin_problems

    train = builtin_problems(300, 0, "train")
    heldout = builtin_problems(70, 1, "heldout")
    index = build_index([("builtin", heldout)], 8)
    shares = [m.share for r in train if (m := index.match(r[R.QUESTION]))]
    assert max(shares) >= 0.5  # the wording overlaps: a share rule alone would quarantine these
    kept, bad, _ = screen(train, dedup=False, index=index, threshold=0.5)
    assert len(kept) == len(train) and not bad
    _, bad, _ = screen(heldout[:5], dedup=False, index=index, threshold=0.5)
    assert [b[R.REASON] for b in bad] == ["contaminated"] * 5


def test_the_index_screens_without_a_pairwise_scan() -> None:
    """10k problems against 2k items: each problem touches only the items it shares n-grams with."""
    items = [
        f"Item {i}: what is the value of x if {i} x plus {i + 7} equals {3 * i}?"
        for i in range(2000)
    ]
    problems = _rows(
        *(f"Problem {i} asks for the area of a circle of radius {i}." for i in range(10_000))
    )
    index = build_index([("bench", _rows(*items))], 8)
    start = time.perf_counter()
    kept, bad, _ = screen(problems, dedup=True, index=index, threshold=0.5)
    elapsed = time.perf_counter() - start
    assert len(kept) == 10_000 and not bad
    assert (
        elapsed < 20
    )  # a pairwise scan of 20M pairs takes minutes; the bench measures the real cost


def test_benchmark_index_reads_eval_benchmarks_and_says_what_it_left_out(tmp_path: Path) -> None:
    bench = tmp_path / "mine.jsonl"
    bench.write_text(
        '{"problem": "'
        + OTHER
        + '", "answer": "3/28"}\n{"problem": "'
        + AIME
        + '", "answer": "5"}\n'
    )
    cfg = dataclasses.replace(
        Config(),
        eval=EvalConfig(
            benchmarks=("math500", str(bench)), data_dir=str(tmp_path / "nowhere"), num_problems=1
        ),
    )
    index, notes = benchmark_index(cfg)
    # every item of a file is indexed, not only the eval.num_problems evaluated now
    assert index is not None and [i[:2] for i in index.items] == [
        ("mine", "mine/0"),
        ("mine", "mine/1"),
    ]
    assert len(notes) == 1 and notes[0].startswith("math500: not on disk")
    off = dataclasses.replace(cfg, problems=dataclasses.replace(cfg.problems, decontaminate=False))
    assert benchmark_index(off) == (None, ["problems.decontaminate=false"])
