"""Trace files → truncation rows: field mapping, list-CoT picks, draft-marker stripping, think split and gold
reading the way the problems stage reads them (palign_ray.fields; pure)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from palign_ray import records as R
from palign_ray.artifacts import quarantine_row
from palign_ray.fields import (
    decode_list,
    gold_answer,
    looks_serialised_list,
    missing,
    pick,
    split_think,
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
    """Input rows → truncate rows {problem_id, question, cot, answer}, plus quarantine rows for unusable ones."""
    out: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    for n, row in enumerate(rows):
        base = str(row.get(id_field)) if id_field and row.get(id_field) is not None else str(n)
        question = row.get(question_field)
        if (
            isinstance(question, str)
            and strip_prompt_prefix
            and question.startswith(strip_prompt_prefix)
        ):
            question = question[len(strip_prompt_prefix) :].lstrip()
        cot = row.get(cot_field)
        # s1K's trajectories written as the text of a list: decoded (pick says why one cannot be)
        if isinstance(cot, str) and looks_serialised_list(cot):
            items = decode_list(cot)
            if items is None or not all(isinstance(x, str) for x in items):
                why = pick(cot, 0, cot_field, "cot")
                bad.append(quarantine_row("truncate", base, why.reason, why.detail))
                continue
            cot = items
        if isinstance(cot, list) and len(cot) == 1 and not cot_indices:
            cot = cot[0]  # one trace: no index needed
        picks: list[tuple[str, Any]] = [(base, cot)]
        if isinstance(cot, list):
            if not cot_indices:
                bad.append(
                    quarantine_row(
                        "truncate",
                        base,
                        "cot_is_list",
                        f"field {cot_field!r} is a list; pass --cot-index",
                    )
                )
                continue
            picks = [
                (f"{base}-{i}", cot[i] if -len(cot) <= i < len(cot) else None) for i in cot_indices
            ]
        # truncation itself needs no gold (a missing one stays null); one that is there is read the
        # problems stage's way: ["5"] is 5, a dict is quarantined, never stringified
        raw = row.get(answer_field)
        gold = None if missing(raw) else gold_answer(raw, answer_field, prose_is_solution=False)
        if gold is not None and gold.answer is None:
            bad.append(quarantine_row("truncate", base, gold.reason, gold.detail))
            continue
        for pid, text in picks:
            if text is not None and not isinstance(text, str):
                bad.append(
                    quarantine_row(
                        "truncate",
                        pid,
                        "cot_not_text",
                        f"field {cot_field!r} is {type(text).__name__}",
                    )
                )
                continue
            if isinstance(text, str) and not keep_markers:
                text = DRAFT_MARKERS.sub("", text)
            if isinstance(text, str):
                # the reasoning only: R1-style `</think>` and the answer after it are not the trace
                text = split_think(text).reasoning
            out.append(
                {
                    R.PROBLEM_ID: pid,
                    R.QUESTION: question,
                    R.COT: text,
                    R.ANSWER: gold and gold.answer,
                }
            )
    return out, bad
