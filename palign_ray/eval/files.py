"""Grading a file of existing generations (`palign grade`): no model, the eval's grader and metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from palign_ray import records as R
from palign_ray.artifacts import quarantine_row, read_rows
from palign_ray.benchmarks import BENCHMARK
from palign_ray.config import EvalConfig
from palign_ray.eval.score import REFERENCE_LABEL, compute_metrics, grade_samples, reason_counts
from palign_ray.fields import (
    DUPLICATE,
    decode_list,
    gold_answer,
    looks_serialised_list,
    missing,
    read_id,
    read_text,
)


def generations_from_file(
    path: str,
    question_field: str,
    answer_field: str,
    output_field: str,
    id_field: str = "",
    label_field: str = "label",
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """A file of generations → (problems, generation rows, quarantine); one benchmark named after the file."""
    rows, bad = read_rows(path, "grade")
    bench = Path(path).stem
    problems, gens = [], []
    seen: set[str] = set()
    for n, row in enumerate(rows):
        ident = read_id(row, id_field, n)
        pid = f"{bench}/{ident.value}"
        where = f"{path}:{row.get('_source_line', n + 1)}"
        outputs, why = _samples(row.get(output_field), output_field)
        # the problems stage's gold reading: ["5"] is 5, a dict or NaN is quarantined, never stringified
        g = gold_answer(row.get(answer_field), answer_field, prose_is_solution=False)
        question = row.get(
            question_field
        )  # kept for reference only: optional, but never stringified
        q = read_text(question, question_field, "question") if not missing(question) else None
        for check in (ident, q):
            if why is None and check is not None and check.reason:
                why = (check.reason, check.detail)
        if why is None and g.answer is None:
            why = (g.reason, g.detail)
        if why is None and pid in seen:
            why = (DUPLICATE, "a row with this id came earlier in the file")
        if why is not None:
            bad.append(quarantine_row("grade", pid, why[0], f"{where}: {why[1]}"))
            continue
        seen.add(pid)
        refs = row.get(label_field)
        problems.append(
            {
                R.PROBLEM_ID: pid,
                R.QUESTION: q.value if q is not None else "",
                R.ANSWER: g.answer,
                BENCHMARK: bench,
            }
        )
        gens.append(
            {
                R.PROBLEM_ID: pid,
                R.GENERATIONS: outputs,
                REFERENCE_LABEL: refs
                if isinstance(refs, list) and len(refs) == len(outputs)
                else None,
            }
        )
    return problems, gens, bad


def _samples(value: Any, field: str) -> tuple[list[str], tuple[str, str] | None]:
    """A generations field: one text, a list of texts, or a list serialised as text (a CSV round-trip)."""
    if isinstance(value, str) and looks_serialised_list(value):
        decoded = decode_list(value)
        if decoded is None:
            return [], ("output_is_serialised_list", f"field {field!r} does not parse as a list")
        value = decoded
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items:
        return [], ("missing_output", f"field {field!r} holds no sample")
    texts: list[str] = []
    for i, item in enumerate(items):
        text = read_text(item, field, "output")
        if text.reason and not isinstance(item, str):  # a blank sample is a sample, graded wrong
            return [], (text.reason, f"{text.detail} (sample {i})")
        texts.append(item)
    return texts, None


def grade_file(
    path: str,
    cfg: EvalConfig,
    question_field: str = "prompt_ori",
    answer_field: str = "answer",
    output_field: str = "output",
    id_field: str = "",
    seed: int = 0,
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """Grade a file of generations without generating → (metrics, per-sample labels, quarantine)."""
    problems, gens, bad = generations_from_file(
        path, question_field, answer_field, output_field, id_field
    )
    samples, more_bad = grade_samples(problems, gens, cfg)
    metrics = compute_metrics(samples, cfg, seed)
    metrics.update(input=str(path), quarantine=reason_counts(bad + more_bad))
    return metrics, samples, bad + more_bad
