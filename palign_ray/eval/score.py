"""Grading generations and scoring them: sample rows, failed problems, pass@k per benchmark, reference agreement."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from palign_ray import records as R
from palign_ray.artifacts import quarantine_row
from palign_ray.benchmarks import BENCHMARK
from palign_ray.config import EvalConfig
from palign_ray.grading import extract_boxed, grade
from palign_ray.metrics import ProblemResult, macro_average, summarize
from palign_ray.streaming import LOST

STAGE = "eval"
# The authors' evaluation prompt, verbatim: no space between the instruction and the problem.
INSTRUCTION = r"Please reason step by step, and put your final answer within \boxed{}."

# Per-sample label columns (samples.jsonl / labels.jsonl).
SAMPLE_INDEX = "sample_index"
CORRECT = "correct"
LABEL = "label"  # 0/1, the authors' name
EXTRACTED = "extracted"
GOLD = "gold"
FINISH_REASON = "finish_reason"
NUM_TOKENS = "num_generated_tokens"
NUM_CHARS = "num_chars"
GENERATION = "generation"
ANSWER_SOURCE = "answer_source"  # "boxed" | "text" (paper grader only) | "" when incorrect
REFERENCE_LABEL = "reference_label"  # a label that came with the input file (palign grade)
# Quarantine reasons of problems that got no samples: they count as incorrect in the metrics.
GENERATION_FAILED = "generation_failed"
NO_GENERATION = "no_generation"
LOST_IN_STAGE = LOST
FAILED_REASONS = (GENERATION_FAILED, NO_GENERATION, LOST_IN_STAGE)


def build_prompt(problem: str) -> str:
    return INSTRUCTION + problem


# ---------------------------------------------------------------------------------------------
# Grading of generations (pure apart from the grading child processes)


def grade_samples(
    problems: list[dict[str, Any]], gen_rows: Iterable[dict[str, Any]], cfg: EvalConfig
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Join generation rows to problems on problem_id and grade every sample → (sample rows, quarantine)."""
    by_id = {p[R.PROBLEM_ID]: p for p in problems}
    jobs: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    seen: set[str] = set()
    for row in gen_rows:
        pid = str(row[R.PROBLEM_ID])
        problem = by_id.get(pid)
        if problem is None or pid in seen:
            bad.append(
                quarantine_row(
                    STAGE,
                    pid,
                    "unknown_problem_id",
                    "generation row matches no (or an already graded) problem",
                )
            )
            continue
        seen.add(pid)
        if row.get("error") or not row.get(R.GENERATIONS):
            bad.append(
                quarantine_row(
                    STAGE,
                    pid,
                    GENERATION_FAILED,
                    str(row.get("error") or "no generations"),
                    **{BENCHMARK: problem[BENCHMARK]},
                )
            )
            continue
        jobs += _sample_jobs(problem, row)
    for pid in sorted(set(by_id) - seen):
        bad.append(
            quarantine_row(
                STAGE,
                pid,
                NO_GENERATION,
                "the generation stage returned no row for this problem",
                **{BENCHMARK: by_id[pid][BENCHMARK]},
            )
        )
    return grade_jobs(jobs, cfg), bad


def _sample_jobs(problem: dict[str, Any], row: dict[str, Any]) -> list[dict[str, Any]]:
    gens = list(row[R.GENERATIONS])
    finish = list(row.get(R.FINISH_REASONS) or [""] * len(gens))
    tokens = list(row.get(R.NUM_GENERATED_TOKENS) or [None] * len(gens))
    refs = list(row.get(REFERENCE_LABEL) or [None] * len(gens))
    return [
        {
            BENCHMARK: problem[BENCHMARK],
            R.PROBLEM_ID: problem[R.PROBLEM_ID],
            SAMPLE_INDEX: i,
            GOLD: problem[R.ANSWER],
            FINISH_REASON: finish[i] if i < len(finish) else "",
            NUM_TOKENS: tokens[i] if i < len(tokens) else None,
            NUM_CHARS: len(text),
            REFERENCE_LABEL: refs[i] if i < len(refs) else None,
            GENERATION: text,
        }
        for i, text in enumerate(gens)
    ]


def grade_jobs(jobs: list[dict[str, Any]], cfg: EvalConfig) -> list[dict[str, Any]]:
    """Grade sample rows in a few threads (each grading thread owns its own math-verify child)."""

    def one(job: dict[str, Any]) -> dict[str, Any]:
        g = grade(job[GENERATION], job[GOLD], timeout_s=cfg.grade_timeout_s, mode=cfg.grader)
        boxed = extract_boxed(job[GENERATION])
        # "text" marks samples only the paper grader's whole-output math-verify found correct.
        source = "" if not g.correct else ("boxed" if g.extracted == boxed else "text")
        return {
            **job,
            CORRECT: g.correct,
            LABEL: int(g.correct),
            R.REASON: g.reason,
            EXTRACTED: g.extracted,
            ANSWER_SOURCE: source,
        }

    with ThreadPoolExecutor(max_workers=max(1, cfg.grade_workers)) as pool:
        out = list(pool.map(one, jobs))
    for r in out:  # drop empty optional columns so files stay readable
        if r[REFERENCE_LABEL] is None:
            del r[REFERENCE_LABEL]
    return out


def problem_results(
    samples: list[dict[str, Any]], correct: Callable[[dict[str, Any]], bool] | None = None
) -> dict[str, list[ProblemResult]]:
    """Sample rows → ProblemResults grouped by benchmark (samples ordered by sample_index); `correct`
    (default: the row's `correct`) decides each sample without copying the rows."""
    is_correct = correct or (lambda r: bool(r[CORRECT]))
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for s in samples:
        grouped.setdefault(s[BENCHMARK], {}).setdefault(s[R.PROBLEM_ID], []).append(s)
    out: dict[str, list[ProblemResult]] = {}
    for bench, problems in grouped.items():
        out[bench] = []
        for pid, rows in problems.items():
            rows = sorted(rows, key=lambda r: r[SAMPLE_INDEX])
            tokens = (
                tuple(r[NUM_TOKENS] for r in rows)
                if all(r.get(NUM_TOKENS) is not None for r in rows)
                else ()
            )
            out[bench].append(
                ProblemResult(
                    pid,
                    tuple(is_correct(r) for r in rows),
                    num_tokens=tokens,
                    num_chars=tuple(r[NUM_CHARS] for r in rows),
                    finish_reasons=tuple(r[FINISH_REASON] for r in rows if r.get(FINISH_REASON)),
                    reasons=tuple(r[R.REASON] for r in rows),
                )
            )
    return out


def failed_results(
    quarantined: Iterable[dict[str, Any]], num_samples: int
) -> dict[str, list[ProblemResult]]:
    """Problems whose generation failed (quarantine rows of grade_samples) as all-incorrect ProblemResults per benchmark."""
    out: dict[str, list[ProblemResult]] = {}
    for row in quarantined:
        if row[R.REASON] in FAILED_REASONS:
            out.setdefault(row[BENCHMARK], []).append(
                ProblemResult(row[R.PROBLEM_ID], (False,) * num_samples, failed=row[R.REASON])
            )
    return out


def _with_failed(
    graded: dict[str, list[ProblemResult]], failed: dict[str, list[ProblemResult]]
) -> dict[str, list[ProblemResult]]:
    return {b: graded.get(b, []) + failed.get(b, []) for b in sorted(set(graded) | set(failed))}


def compute_metrics(
    samples: list[dict[str, Any]],
    cfg: EvalConfig,
    seed: int = 0,
    failed: Iterable[dict[str, Any]] = (),
) -> dict[str, Any]:
    """Per-benchmark summaries plus their macro average (and agreement with reference labels if any).

    `failed`: grade_samples' quarantine rows; problems without samples count as incorrect (the paper's
    denominator is every problem) and are reported as num_failed_problems / failed_problem_rate.
    """
    lost = failed_results(failed, cfg.num_samples)
    per = {
        b: summarize(p, cfg.bootstrap_samples, seed)
        for b, p in _with_failed(problem_results(samples), lost).items()
    }
    out: dict[str, Any] = {"grader": cfg.grader, "benchmarks": per, "average": macro_average(per)}
    if cfg.grader == "paper":  # the strict numbers too: only the last boxed answer counts

        def strict(s: dict[str, Any]) -> bool:
            return bool(s[CORRECT]) and s.get(ANSWER_SOURCE) == "boxed"

        out["boxed_only"] = {
            b: {k: m[k] for k in ("pass@k", "mean_accuracy", "pass@n_any_correct")}
            for b, p in _with_failed(problem_results(samples, strict), lost).items()
            for m in [summarize(p, 0, seed)]
        }
    refs = [s for s in samples if s.get(REFERENCE_LABEL) is not None]
    if refs:
        out["reference_agreement"] = reference_agreement(refs, cfg, seed)
    return out


def reference_agreement(
    samples: list[dict[str, Any]], cfg: EvalConfig, seed: int
) -> dict[str, Any]:
    """How our labels compare with labels shipped in the input (e.g. the authors' `label`)."""
    ours = [int(bool(s[CORRECT])) for s in samples]
    theirs = [int(bool(s[REFERENCE_LABEL])) for s in samples]
    ref_samples = [{**s, CORRECT: bool(t)} for s, t in zip(samples, theirs, strict=True)]
    ref_metrics = {
        b: summarize(p, cfg.bootstrap_samples, seed)
        for b, p in sorted(problem_results(ref_samples).items())
    }
    return {
        "num_samples": len(ours),
        "agreement": sum(a == b for a, b in zip(ours, theirs, strict=True)) / len(ours),
        "ours_1_reference_0": sum(a > b for a, b in zip(ours, theirs, strict=True)),
        "ours_0_reference_1": sum(a < b for a, b in zip(ours, theirs, strict=True)),
        "reference_metrics": {
            b: {k: m[k] for k in ("pass@k", "mean_accuracy", "pass@n_any_correct")}
            for b, m in ref_metrics.items()
        },
        "disagreements": [
            {
                R.PROBLEM_ID: s[R.PROBLEM_ID],
                SAMPLE_INDEX: s[SAMPLE_INDEX],
                "ours": a,
                "reference": b,
                EXTRACTED: s[EXTRACTED],
                GOLD: s[GOLD],
                R.REASON: s[R.REASON],
            }
            for s, a, b in zip(samples, ours, theirs, strict=True)
            if a != b
        ],
    }


def reason_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Quarantine rows per reason code, in first-seen order."""
    return dict(Counter(r[R.REASON] for r in rows))
