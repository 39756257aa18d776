"""Trace files → truncation rows: field mapping, list-CoT picks, draft-marker stripping, think split and gold
reading the way the problems stage reads them (palign_ray.fields; pure)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from palign_ray import records as R
from palign_ray.artifacts import quarantine_row
from palign_ray.fields import (
    DUPLICATE,
    decode_list,
    gold_answer,
    looks_serialised_list,
    missing,
    read_id,
    read_text,
    read_trace,
)

DRAFT_MARKERS = re.compile(
    r"<(?:Begin|End)_of_(?:Draft|Prefix)>"
)  # the authors' released outputs carry these
QUARANTINE_COLUMNS = (R.STAGE, R.PROBLEM_ID, R.REASON, R.DETAIL)


def traces_from_rows(
    rows: list[dict[str, Any]],
    *,
    question_field: str = "question",
    cot_field: str = "cot",
    answer_field: str = "answer",
    id_field: str = "",
    cot_indices: Sequence[int] = (),
    strip_prompt_prefix: str = "",
    keep_markers: bool = False,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Input rows → truncate rows {problem_id, question, cot, answer}, plus quarantine rows for unusable ones.

    Every field is read the problems stage's way (`fields.read_text`, `read_trace`, `gold_answer`):
    missing → `missing_<field>`, the wrong type → `wrong_type`, a repeated id → `duplicate_problem_id`.
    """
    out: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    seen: set[str] = set()
    for n, row in enumerate(rows):
        for pid, trace, why in _one_row(
            row,
            n,
            question_field,
            cot_field,
            answer_field,
            id_field,
            cot_indices,
            strip_prompt_prefix,
            keep_markers,
        ):
            if why is None and pid in seen:
                why = (DUPLICATE, f"id {pid!r} came earlier in the input")
            if why is not None:
                bad.append(quarantine_row("truncate", pid, *why))
                continue
            seen.add(pid)
            out.append(trace)
    return out, bad


def _one_row(
    row: dict[str, Any],
    n: int,
    question_field: str,
    cot_field: str,
    answer_field: str,
    id_field: str,
    cot_indices: Sequence[int],
    strip_prompt_prefix: str,
    keep_markers: bool,
) -> list[tuple[str, dict[str, Any], tuple[str, str] | None]]:
    """(problem id, truncate row, (reason, detail) or None) for each trace the row yields (one per --cot-index)."""
    ident = read_id(row, id_field, n)
    base = ident.value
    if ident.reason:
        return [(base, {}, (ident.reason, ident.detail))]
    question = read_text(row.get(question_field), question_field, "question")
    if question.reason:
        return [(base, {}, (question.reason, question.detail))]
    text = question.value
    if strip_prompt_prefix and text.startswith(strip_prompt_prefix):
        text = text[len(strip_prompt_prefix) :].lstrip()
    # truncation itself needs no gold (a missing one stays null); one that is there is read the
    # problems stage's way: ["5"] is 5, a dict is quarantined, never stringified
    raw = row.get(answer_field)
    gold = None if missing(raw) else gold_answer(raw, answer_field, prose_is_solution=False)
    if gold is not None and gold.answer is None:
        return [(base, {}, (gold.reason, gold.detail))]
    cot: Any = row.get(cot_field)
    if isinstance(cot, str) and looks_serialised_list(cot):
        cot = decode_list(cot) or cot  # an undecodable one is quarantined by read_trace, with why
    is_list = isinstance(cot, (list, tuple))
    if not cot_indices and is_list and len(cot) > 1:
        why = ("cot_is_list", f"field {cot_field!r} is a list of {len(cot)}; pass --cot-index")
        return [(base, {}, why)]
    # --cot-index picks from a list; a row whose trace is one text is that one trace, under its id
    picks = [(f"{base}-{i}", i) for i in cot_indices] if cot_indices and is_list else [(base, 0)]
    result: list[tuple[str, dict[str, Any], tuple[str, str] | None]] = []
    for pid, index in picks:
        picked, split = read_trace(cot, cot_field, index, role="cot")
        if picked.reason:
            result.append((pid, {}, (picked.reason, picked.detail)))
            continue
        trace = split.reasoning if keep_markers else DRAFT_MARKERS.sub("", split.reasoning)
        row_out = {
            R.PROBLEM_ID: pid,
            R.QUESTION: text,
            R.COT: trace,
            R.ANSWER: gold and gold.answer,
        }
        result.append((pid, row_out, None))
    return result
