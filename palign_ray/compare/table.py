"""Table 1's numbers: each finished evaluation's per-problem correctness, scores with bootstrap CIs, paired differences.

Scores come from each evaluation's per-sample labels (`samples.jsonl`, failed problems from
`quarantine.jsonl` as incorrect), so differences can be paired problem by problem.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from palign_ray.artifacts import read_jsonl
from palign_ray.compare import stats as S

BASE = "base"


def eval_rows(model_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
    """(samples, failed problems) of one finished evaluation, or None if it has not finished."""
    from palign_ray.eval.score import FAILED_REASONS

    if not (model_dir / ".done").is_file():
        return None
    samples, _ = read_jsonl(model_dir / "samples.jsonl")
    quar, _ = (
        read_jsonl(model_dir / "quarantine.jsonl")
        if (model_dir / "quarantine.jsonl").is_file()
        else ([], [])
    )
    return samples, [q for q in quar if q.get("reason") in FAILED_REASONS]


def correct_of(
    rows: tuple[list[dict[str, Any]], list[dict[str, Any]]], num_samples: int
) -> dict[str, dict[str, list[bool]]]:
    return S.correct_by_problem(rows[0], rows[1], num_samples)


def pass_ks(correct: list[dict[str, dict[str, list[bool]]]]) -> list[int]:
    """pass@1 and pass@n with n the smallest sample count of any problem (the paper: Pass@1, Pass@3)."""
    n = min(
        (len(c) for cb in correct for by_pid in cb.values() for c in by_pid.values()), default=1
    )
    return sorted({1, max(1, n)})


def _strata(
    correct: dict[str, dict[str, list[bool]]], benches: list[str], k: int
) -> dict[str, dict[str, float]]:
    return {b: S.pass_k_by_problem(correct.get(b, {}), k) for b in benches}


def score_rows(
    rows: dict[str, dict[str, dict[str, list[bool]]]],
    benches: list[str],
    ks: list[int],
    num_resamples: int,
    seed: int,
) -> dict[str, Any]:
    """label → {"pass@k": {bench or "average": cell}} with bootstrap CIs."""
    out: dict[str, Any] = {}
    for label, correct in rows.items():
        cells: dict[str, Any] = {}
        for k in ks:
            per = _strata(correct, benches, k)
            cells[f"pass@{k}"] = {
                b: S.score_cell([list(per[b].values())], num_resamples, seed + k) for b in benches
            }
            cells[f"pass@{k}"]["average"] = S.score_cell(
                [list(per[b].values()) for b in benches], num_resamples, seed + k
            )
        out[label] = cells
    return out


def paired_rows(
    rows: dict[str, dict[str, dict[str, list[bool]]]],
    baseline: str,
    benches: list[str],
    ks: list[int],
    num_resamples: int,
    seed: int,
) -> dict[str, Any]:
    """label → {"pass@k": {bench or "average": paired cell}}: label − baseline over the same problems (base left out)."""
    out: dict[str, Any] = {}
    for label, correct in rows.items():
        if label in (baseline, BASE):
            continue
        cells: dict[str, Any] = {}
        for k in ks:
            mine, theirs = _strata(correct, benches, k), _strata(rows[baseline], benches, k)
            pairs = {b: S.paired(mine[b], theirs[b]) for b in benches}
            cells[f"pass@{k}"] = {
                b: S.paired_cell([pairs[b][0]], num_resamples, seed + k, len(pairs[b][1]))
                for b in benches
            }
            cells[f"pass@{k}"]["average"] = S.paired_cell(
                [pairs[b][0] for b in benches],
                num_resamples,
                seed + k,
                sum(len(pairs[b][1]) for b in benches),
            )
        out[label] = cells
    return out


def table_one(
    rows: dict[str, dict[str, dict[str, list[bool]]]],
    baseline: str,
    benches: list[str],
    ks: list[int],
    num_resamples: int,
    seed: int,
) -> dict[str, Any]:
    """Scores with CIs, and paired differences against the baseline and against base (did training move it?)."""
    return {
        "scores": score_rows(rows, benches, ks, num_resamples, seed),
        "paired_vs_baseline": paired_rows(rows, baseline, benches, ks, num_resamples, seed)
        if baseline in rows
        else {},
        "paired_vs_base": paired_rows(rows, BASE, benches, ks, num_resamples, seed)
        if BASE in rows
        else {},
    }


def _only(
    rows: dict[str, dict[str, dict[str, list[bool]]]], keep: set[str]
) -> dict[str, dict[str, dict[str, list[bool]]]]:
    """`rows` restricted to the problems in `keep` (ids as the evaluations write them)."""
    return {
        label: {b: {p: c for p, c in by.items() if p in keep} for b, by in correct.items()}
        for label, correct in rows.items()
    }


def subset_scores(
    rows: dict[str, dict[str, dict[str, list[bool]]]],
    groups: dict[str, Any],
    baseline: str,
    benches: list[str],
    ks: list[int],
    num_resamples: int,
    seed: int,
) -> dict[str, Any]:
    """Table 1 on the novel-answer subset (with paired differences) and pass@1 per template."""
    out: dict[str, Any] = {}
    novel = groups.get("novel_answer")
    if novel is not None:
        sub = _only(rows, novel)
        out["novel_answer"] = {
            "num_problems": len(novel),
            "of": groups["num_problems"],
            "definition": groups["definition"],
            **table_one(sub, baseline, benches, ks, num_resamples, seed),
        }
    out["per_template"] = {
        t: {
            "num_problems": len(pids),
            "scores": score_rows(_only(rows, pids), benches, [1], num_resamples, seed),
        }
        for t, pids in sorted(groups.get("templates", {}).items())
    }
    return out


def mean_tokens(samples: list[dict[str, Any]]) -> float | None:
    vals = [s["num_generated_tokens"] for s in samples if s.get("num_generated_tokens") is not None]
    return sum(vals) / len(vals) if vals else None


def base_consistency(bases: dict[str, dict[str, dict[str, list[bool]]]]) -> dict[str, Any]:
    """Distinct base evaluations (one per base_eval directory; one when the methods share it) must agree sample by sample."""
    labels = list(bases)
    if len(labels) < 2:
        return {"num_evaluations": len(labels), "agree": True, "differing_problems": []}
    ref = bases[labels[0]]
    diff = sorted(
        {
            f"{b}/{pid}"
            for lab in labels[1:]
            for b in set(ref) | set(bases[lab])
            for pid in set(ref.get(b, {})) | set(bases[lab].get(b, {}))
            if ref.get(b, {}).get(pid) != bases[lab].get(b, {}).get(pid)
        }
    )
    return {"num_evaluations": len(labels), "agree": not diff, "differing_problems": diff}
