"""Benchmark loading: a small name → (file, fields) table plus arbitrary user files; bad rows quarantined."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from palign_ray import records as R
from palign_ray.artifacts import quarantine_row, read_rows
from palign_ray.fields import first_present, gold_answer
from palign_ray.grading import normalize_gold

log = logging.getLogger(__name__)

STAGE = "benchmarks"
BENCHMARK = "benchmark"  # column: which benchmark a problem belongs to


@dataclass(frozen=True)
class BenchmarkSpec:
    """Where a benchmark's file is (relative to the data dir) and which fields hold what."""

    path: str
    question_field: str
    answer_field: str
    id_field: str = ""  # empty = the row number
    answer_kind: Literal["answer", "solution"] = "answer"  # solution = gold_from_solution(field)


# The files in ../shared/data (see SOURCES.md there for provenance and fields).
BENCHMARKS: dict[str, BenchmarkSpec] = {
    "math500": BenchmarkSpec("math500/palign_math500.jsonl", "problem", "answer", "unique_id"),
    "aime24": BenchmarkSpec("aime24/palign_Aime24.jsonl", "problem", "answer", "id"),
    "aime25": BenchmarkSpec("aime25/palign_Aime25.jsonl", "problem", "answer", "id"),
    # ids restart at 0 for every contest in this file, so rows are numbered instead.
    "amc12": BenchmarkSpec("amc/palign_Amc12.jsonl", "problem", "answer", ""),
    "amc23": BenchmarkSpec("amc/qwen25math_amc23_test.jsonl", "problem", "answer", "id"),
    "gsm8k": BenchmarkSpec("gsm8k/gsm8k_test.jsonl", "question", "answer", "", "solution"),
}
BUILTIN = "builtin"
QUESTION_FIELDS = ("problem", "question", "prompt")
ANSWER_FIELDS = ("answer",)
SOLUTION_FIELDS = ("solution",)
ID_FIELDS = ("id", "unique_id", "problem_id")


def benchmark_names() -> list[str]:
    return [BUILTIN, *BENCHMARKS]


def _first_present(row: dict[str, Any], fields: tuple[str, ...]) -> str:
    return first_present(row, fields) or ""


def guess_spec(
    path: str,
    row: dict[str, Any],
    question_field: str = "",
    answer_field: str = "",
    id_field: str = "",
) -> BenchmarkSpec:
    """A spec for a user file: named fields, else the usual names found in its first row."""
    q = question_field or _first_present(row, QUESTION_FIELDS) or "problem"
    if answer_field:
        return BenchmarkSpec(path, q, answer_field, id_field or _first_present(row, ID_FIELDS))
    a = _first_present(row, ANSWER_FIELDS)
    kind: Literal["answer", "solution"] = "answer"
    if not a and _first_present(row, SOLUTION_FIELDS):
        a, kind = _first_present(row, SOLUTION_FIELDS), "solution"
    return BenchmarkSpec(path, q, a or "answer", id_field or _first_present(row, ID_FIELDS), kind)


def _gold(row: dict[str, Any], spec: BenchmarkSpec) -> str:
    """The normalised gold answer of a row (ValueError naming the field when there is none).

    The same reading as the problems stage (`fields.gold_answer`): a bare answer, a list of answers,
    or a worked solution (GSM8K `####`, a boxed answer, a marked final line) in the answer field.
    """
    field, raw = spec.answer_field, row.get(spec.answer_field)
    if (
        spec.answer_kind == "solution"
    ):  # the field is a worked solution: its final answer or nothing
        gold = gold_answer(
            None, field, solution=raw if isinstance(raw, str) else "", solution_field=field
        )
    else:
        gold = gold_answer(raw, field, prose_is_solution=False)
    if gold.answer is None:
        raise ValueError(f"field {field!r}: {gold.detail or gold.reason}")
    return normalize_gold(gold.answer)


def problems_from_rows(
    name: str, rows: list[dict[str, Any]], spec: BenchmarkSpec
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows → problems {problem_id, question, answer, benchmark} + quarantine (every row lands in one)."""
    problems: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    seen: set[str] = set()
    for n, row in enumerate(rows):
        raw_id = row.get(spec.id_field) if spec.id_field else None
        pid = f"{name}/{raw_id if raw_id not in (None, '') else n}"
        where = f"{spec.path}:{row.get('_source_line', n + 1)}"
        question = row.get(spec.question_field)
        if not isinstance(question, str) or not question.strip():
            bad.append(
                quarantine_row(
                    STAGE,
                    pid,
                    "missing_question",
                    f"{where}: field {spec.question_field!r} missing or empty",
                )
            )
            continue
        try:
            gold = _gold(row, spec)
        except ValueError as e:
            bad.append(quarantine_row(STAGE, pid, "missing_answer", f"{where}: {e}"))
            continue
        if pid in seen:
            bad.append(
                quarantine_row(STAGE, pid, "duplicate_id", f"{where}: id {raw_id!r} seen before")
            )
            continue
        seen.add(pid)
        problems.append({R.PROBLEM_ID: pid, R.QUESTION: question, R.ANSWER: gold, BENCHMARK: name})
    return problems, bad


def _load_builtin(num_problems: int, seed: int, split: Any) -> list[dict[str, Any]]:
    from palign_ray.builtin import builtin_problems

    rows = builtin_problems(num_problems or 32, seed, split)
    return [
        {
            R.PROBLEM_ID: f"{BUILTIN}/{r[R.PROBLEM_ID]}",
            R.QUESTION: r[R.QUESTION],
            R.ANSWER: normalize_gold(r[R.ANSWER]),
            BENCHMARK: BUILTIN,
        }
        for r in rows
    ]


def load_benchmark(
    name: str,
    data_dir: str | Path,
    num_problems: int = 0,
    seed: int = 0,
    question_field: str = "",
    answer_field: str = "",
    id_field: str = "",
    builtin_split: str = "all",
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(problems, quarantine) of a named benchmark or a JSONL/Parquet path; the first `num_problems` (0 = all).

    `seed` and `builtin_split` only apply to the builtin benchmark (palign_ray.builtin.builtin_problems).
    """
    if name == BUILTIN:
        return _load_builtin(num_problems, seed, builtin_split), []
    if name in BENCHMARKS:
        spec = BENCHMARKS[name]
        path = Path(data_dir) / spec.path
        if not path.is_file():
            raise FileNotFoundError(
                f"benchmark {name!r}: {path} not found (set eval.data_dir to the shared data folder)"
            )
        rows, bad = read_rows(path, STAGE)
    else:
        path = Path(name)
        if not path.exists():
            raise ValueError(
                f"benchmark {name!r} is neither a known name ({', '.join(benchmark_names())}) nor an existing file"
            )
        rows, bad = read_rows(path, STAGE)
        spec = guess_spec(
            str(path), rows[0] if rows else {}, question_field, answer_field, id_field
        )
        name = path.stem
    if num_problems:
        rows = rows[:num_problems]
    problems, quarantined = problems_from_rows(name, rows, spec)
    log.info(
        "benchmark %s: %d problems, %d quarantined",
        name,
        len(problems),
        len(bad) + len(quarantined),
    )
    return problems, bad + quarantined
