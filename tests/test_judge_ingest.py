"""Trace files → truncate rows, read the way the problems stage reads them (issue 27)."""

from __future__ import annotations

import json

from palign_ray.judge.ingest import traces_from_rows


def test_serialised_lists_think_tags_and_gold_are_decoded_not_stringified():
    rows = [
        # s1K: thinking_trajectories written as the text of a one-element list
        {"question": "q0", "cot": json.dumps(["Step one. So 5."]), "answer": "5"},
        # R1-distill: reasoning, </think>, then the answer
        {
            "question": "q1",
            "cot": "Think it through. It is 7.\n</think>\n\nThe answer is \\boxed{7}.",
            "answer": ["7"],
        },
        {"question": "q2", "cot": "Fine. So 3.", "answer": {"v": "3"}},
        {"question": "q3", "cot": "Fine. So 3.", "answer": float("nan")},
        {"question": "q4", "cot": "['unterminated", "answer": "1"},
    ]
    out, bad = traces_from_rows(rows)
    assert [(r["problem_id"], r["cot"], r["answer"]) for r in out] == [
        ("0", "Step one. So 5.", "5"),
        ("1", "Think it through. It is 7.", "7"),
        ("3", "Fine. So 3.", None),  # no gold: truncation needs none, it stays null (not "")
    ]
    assert [(b["problem_id"], b["reason"]) for b in bad] == [
        ("2", "wrong_type"),
        ("4", "cot_is_serialised_list"),
    ]
    assert len(out) + len(bad) == len(rows)


def test_a_list_of_traces_still_needs_indices_unless_it_holds_one():
    rows = [{"question": "q", "cot": ["A. B.", "C. D."], "answer": "1"}]
    out, bad = traces_from_rows(rows)
    assert not out and bad[0]["reason"] == "cot_is_list"
    out, bad = traces_from_rows(rows, cot_indices=[1])
    assert [(r["problem_id"], r["cot"]) for r in out] == [("0-1", "C. D.")] and not bad
