"""The oracle-position ratio of a compare run: the smallest fixed_ratio that keeps every training trace's decisive sentence.

Run as: .venv/bin/python -m bench.oracle_ratio [jobs/configs/compare_mini.yaml]

Issue 28's comparison has an "oracle position" arm: `fixed_ratio` at the smallest share (on a 0.01
grid) whose cut (judge.search.fixed_ratio_k) reaches or passes the known decisive sentence on every
training trace, with the judge's own splitter. It knows where the answer is, so it is a reference
point, not P-ALIGN. The built-in worked solutions are the traces (teacher.use_reference_solutions:
SmolLM2 wrote no correct trace in 192 samples); a trace whose splitter disagrees with its known
decisive offset is counted and left out.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def oracle_ratio(config: str) -> dict[str, float | int]:
    from palign_ray.builtin import builtin_problems
    from palign_ray.config import load_config
    from palign_ray.judge.problem import known_cut, sentence_ends
    from palign_ray.judge.search import fixed_ratio_k

    cfg = load_config(config, [])
    p, j = cfg.problems, cfg.judge
    traces = builtin_problems(p.num_problems, p.builtin_seed, p.builtin_split, p.builtin_style)
    cuts, skipped = [], 0
    for t in traces:
        ends = sentence_ends(t["solution"], j.segmentation, j.max_sentence_chars)
        k = known_cut(t["decisive_sentence"], t["decisive_char_end"], ends)
        if k < 0:
            skipped += 1
            continue
        cuts.append((len(ends), k))
    ratio = next(
        r / 100 for r in range(1, 101) if all(fixed_ratio_k(n, r / 100) >= k for n, k in cuts)
    )
    return {
        "ratio": ratio,
        "traces": len(cuts),
        "skipped": skipped,
        "mean_kept_share": round(sum(fixed_ratio_k(n, ratio) / n for n, _ in cuts) / len(cuts), 3),
        "mean_decisive_share": round(sum(k / n for n, k in cuts) / len(cuts), 3),
    }


if __name__ == "__main__":
    print(
        oracle_ratio(
            sys.argv[1] if len(sys.argv) > 1 else str(REPO / "jobs/configs/compare_mini.yaml")
        )
    )
