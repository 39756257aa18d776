"""`<run_dir>/compare/samples.parquet`: every evaluation sample behind Table 1, one row each.

One row per (method, benchmark, problem_id, sample_index), from the same `samples.jsonl` and
quarantine files the report scores, so each Table-1 cell can be recomputed from this file alone: a
problem whose generation failed has `num_samples` rows with correct=False and its reason in `failed`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from palign_ray import records as R
from palign_ray.benchmarks import BENCHMARK
from palign_ray.eval import score as E

METHOD = "method"
FAILED = (
    "failed"  # the evaluation's quarantine reason for a problem without samples; None otherwise
)
COLUMNS = (
    METHOD,
    BENCHMARK,
    R.PROBLEM_ID,
    E.SAMPLE_INDEX,
    E.CORRECT,
    E.NUM_TOKENS,
    E.FINISH_REASON,
    E.EXTRACTED,
    E.GENERATION,
    FAILED,
)


def samples_schema() -> Any:
    """Fixed column types, so each method's rows are written as they are read (one at a time)."""
    import pyarrow as pa

    types = {E.SAMPLE_INDEX: pa.int64(), E.CORRECT: pa.bool_(), E.NUM_TOKENS: pa.int64()}
    return pa.schema([(c, types.get(c, pa.string())) for c in COLUMNS])


def sample_rows(
    method: str,
    samples: Iterable[Mapping[str, Any]],
    failed: Iterable[Mapping[str, Any]],
    num_samples: int,
) -> list[dict[str, Any]]:
    """One evaluation's rows: its graded samples, then `num_samples` incorrect rows per failed problem.

    Failed problems count exactly as `compare.stats.correct_by_problem` counts them (a problem that
    also has samples keeps its samples), so per-problem means here equal the report's.
    """
    rows = [_sample_row(method, s) for s in samples]
    seen = {(r[BENCHMARK], r[R.PROBLEM_ID]) for r in rows}
    for f in failed:
        key = (str(f[BENCHMARK]), str(f[R.PROBLEM_ID]))
        if key in seen:
            continue
        seen.add(key)
        rows += [_failed_row(method, *key, i, str(f[R.REASON])) for i in range(num_samples)]
    return rows


def _sample_row(method: str, s: Mapping[str, Any]) -> dict[str, Any]:
    extracted = s.get(E.EXTRACTED)
    return {
        METHOD: method,
        BENCHMARK: str(s[BENCHMARK]),
        R.PROBLEM_ID: str(s[R.PROBLEM_ID]),
        E.SAMPLE_INDEX: int(s[E.SAMPLE_INDEX]),
        E.CORRECT: bool(s[E.CORRECT]),
        E.NUM_TOKENS: s.get(E.NUM_TOKENS),
        E.FINISH_REASON: s.get(E.FINISH_REASON),
        E.EXTRACTED: None if extracted is None else str(extracted),
        E.GENERATION: s.get(E.GENERATION),
        FAILED: None,
    }


def _failed_row(method: str, bench: str, pid: str, index: int, reason: str) -> dict[str, Any]:
    return {
        METHOD: method,
        BENCHMARK: bench,
        R.PROBLEM_ID: pid,
        E.SAMPLE_INDEX: index,
        E.CORRECT: False,
        E.NUM_TOKENS: None,
        E.FINISH_REASON: None,
        E.EXTRACTED: None,
        E.GENERATION: "",
        FAILED: reason,
    }


def write_samples(
    path: Path,
    evaluations: Iterable[tuple[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]]],
    num_samples: int,
) -> int:
    """Write (method, (samples, failed problems)) pairs as they come; returns the number of rows."""
    import pyarrow as pa

    from palign_ray.artifacts import parquet_writer

    schema, num_rows = samples_schema(), 0
    with parquet_writer(path, schema) as writer:
        for method, (samples, failed) in evaluations:
            rows = sample_rows(method, samples, failed, num_samples)
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
            num_rows += len(rows)
    return num_rows
