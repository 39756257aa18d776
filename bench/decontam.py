"""Decontamination of training problems against the evaluation benchmarks (issue 26.3): what the
n-gram screen separates on real data, and what it costs at 100k problems.

Design (committed before any result):
- Benchmarks indexed: math500, aime24, aime25, amc12, amc23 from the shared data dir, read as
  evaluation reads them (`benchmarks.load_benchmark`); n = 8 (problems.decontaminate_ngram).
- For every problem of each set below, the best match's share (the largest share of one benchmark
  item's n-grams found in the problem) is recorded; reported per set: a histogram of shares and the
  count at or above the threshold (0.5), by benchmark.
  * positive controls (each should match): the R1-distill AIME24 and AMC23 questions (the benchmark
    problems as another dataset stored them), and every benchmark item rewritten (upper case, LaTeX
    spacing `\\,` after each `=`, the paper's instruction prepended, a sentence appended);
  * negative control (none should match): GSM8K test questions (another benchmark's problems);
  * the sets the issue names: s1K (50 rows in external/), the released P-ALIGN sample (16 rows),
    the built-in problems (1,000 of the train split, seed 0);
  * the built-in train problems against the built-in held-out benchmark (70, seed 1): templated
    problems share their wording but not their numbers, so this shows where near-duplicates fall.
- The threshold stays at 0.5 if it lies between the positive controls' lowest share and the
  negatives' highest; otherwise the result says which threshold would and why.
- Cost: 100,000 built-in train problems (seed 0) screened (dedup + decontamination) against the
  index of all five benchmarks; index build and screen timed separately, best of 3.

Second experiment (committed after the first run's results, before its own): the first run found
the built-in train problems holding up to 0.889 of a held-out item's 8-grams (282 of 1,000 at or
above 0.5) though no train draw is a held-out draw, so the screen now counts only a whole match
against the built-in benchmark (`decontam.EXACT_ONLY`). Added rows apply the screen's rule as it
stands: built-in train against the built-in held-out benchmark (expect none flagged) and the
held-out problems themselves (a positive control: expect all 70 flagged). Every other row and the
cost measurement are unchanged.

Run: python -m bench.decontam [--data-dir ../shared/data] [--out bench/results/<date>-decontam]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from palign_ray import records as R
from palign_ray.benchmarks import load_benchmark
from palign_ray.builtin import builtin_problems
from palign_ray.decontam import EXACT_ONLY, BenchmarkIndex, build_index, screen

BENCHMARKS = ("math500", "aime24", "aime25", "amc12", "amc23")
N = 8
THRESHOLD = 0.5
BINS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}. "


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _rewrite(text: str) -> str:
    return INSTRUCTION + text.upper().replace("=", "=\\,") + " Show your work."


def _sets(data: Path, bench: dict[str, list[dict[str, Any]]]) -> dict[str, list[str]]:
    ext = data / "external"
    builtin_heldout, _ = load_benchmark("builtin", data, 70, 1, builtin_split="heldout")
    return {
        "positive: R1-distill AIME24 questions": [
            r["question"] for r in _jsonl(ext / "r1_distill_qwen7b_aime24_outputs.jsonl")
        ],
        "positive: R1-distill AMC23 questions": [
            r["question"] for r in _jsonl(ext / "r1_distill_qwen7b_amc23_outputs.jsonl")
        ],
        "positive: benchmark items rewritten": [
            _rewrite(r[R.QUESTION]) for rows in bench.values() for r in rows
        ],
        "negative: GSM8K test": [
            r["question"] for r in _jsonl(data / "gsm8k" / "gsm8k_test.jsonl")
        ],
        "s1K (50)": [r["question"] for r in _jsonl(ext / "s1k_v1_sepo_test50.jsonl")],
        "P-ALIGN released sample (16)": [r["input"] for r in _jsonl(ext / "palign_sample.jsonl")],
        "built-in train (1,000)": [
            r[R.QUESTION] for r in builtin_problems(1000, 0, "train", "short")
        ],
        "_builtin_heldout": [r[R.QUESTION] for r in builtin_heldout],
    }


def _shares(index: BenchmarkIndex, texts: list[str]) -> list[tuple[float, str]]:
    out = []
    for t in texts:
        m = index.match(t)
        out.append((m.share, m.benchmark) if m else (0.0, ""))
    return out


def _histogram(shares: list[float]) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for s in shares:
        if s == 0:
            counts["0"] += 1
            continue
        for lo, hi in zip(BINS, BINS[1:], strict=False):
            if lo < s <= hi:
                counts[f"({lo}, {hi}]"] += 1
                break
    return dict(counts)


def _row(name: str, shares: list[tuple[float, str]]) -> dict[str, Any]:
    values = [s for s, _ in shares]
    flagged = Counter(b for s, b in shares if s >= THRESHOLD)
    return {
        "set": name,
        "problems": len(values),
        "flagged": sum(flagged.values()),
        "flagged_by_benchmark": dict(flagged),
        "min_share": round(min(values), 3) if values else None,
        "max_share": round(max(values), 3) if values else None,
        "histogram": _histogram(values),
    }


def _cost(index_rows: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    problems = builtin_problems(100_000, 0, "train", "short")
    builds, screens, result = [], [], None
    for _ in range(3):
        t = time.perf_counter()
        index = build_index(index_rows.items(), N)
        builds.append(time.perf_counter() - t)
        t = time.perf_counter()
        result = screen(problems, dedup=True, index=index, threshold=THRESHOLD)
        screens.append(time.perf_counter() - t)
    assert result is not None
    return {
        "training_problems": len(problems),
        "benchmark_items": len(index.items),
        "index_build_s": round(min(builds), 3),
        "screen_s": round(min(screens), 3),
        "kept": len(result[0]),
        "duplicates": result[2]["num_duplicates"],
        "contaminated": result[2]["num_contaminated"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    data = Path(args.data_dir)
    bench = {name: load_benchmark(name, data)[0] for name in BENCHMARKS}
    index = build_index(bench.items(), N)
    sets = _sets(data, bench)
    heldout = sets.pop("_builtin_heldout")
    rows = [_row(name, _shares(index, texts)) for name, texts in sets.items()]
    held = [{R.PROBLEM_ID: str(i), R.QUESTION: q} for i, q in enumerate(heldout)]
    builtin_index = build_index([("builtin-heldout", held)], N)
    rows.append(
        _row(
            "built-in train (1,000) vs built-in held-out (70)",
            _shares(builtin_index, sets["built-in train (1,000)"]),
        )
    )
    # the screen's rule as it stands: a whole match only against the built-in benchmark
    rule_index = build_index([("builtin", held)], N)
    for name, texts in (
        ("rule: built-in train (1,000) vs builtin benchmark", sets["built-in train (1,000)"]),
        ("rule, positive: the held-out problems themselves (70)", heldout),
    ):
        problems = [{R.PROBLEM_ID: str(i), R.QUESTION: t} for i, t in enumerate(texts)]
        _, _, summary = screen(problems, dedup=False, index=rule_index, threshold=THRESHOLD)
        rows.append(
            {
                "set": name,
                "problems": len(texts),
                "flagged": summary["num_contaminated"],
                "rule": f"share 1.0 for {sorted(EXACT_ONLY)}",
            }
        )
    result = {
        "n": N,
        "threshold": THRESHOLD,
        "benchmark_items": {k: len(v) for k, v in bench.items()},
        "sets": rows,
        "cost": _cost(bench),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out + ".json").write_text(text + "\n")


if __name__ == "__main__":
    main()
