"""Issue 27.1: every command that reads rows reads a field the problems stage's way.

The same bad value gives the same reason code in problems, truncate, generate, align, grade and
sft-data; a wrong type is quarantined naming the field, never stringified; a repeated id is a
`duplicate_problem_id`; lists, serialised lists and think tags are decoded as the problems stage
decodes them. Pure readers only: no Ray, no engine.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from palign_ray import records as R
from palign_ray.align import check_prefix_rows
from palign_ray.cli.stages import prompt_items
from palign_ray.config import ProblemsConfig
from palign_ray.eval.files import generations_from_file
from palign_ray.fields import read_id, read_text
from palign_ray.judge.ingest import traces_from_rows
from palign_ray.problems import normalize_problems
from palign_ray.sft.records import read_method_row

# (value of a text field, the reason every reader gives it)
BAD_TEXT = [
    (None, "missing"),
    ("   ", "missing"),
    (math.nan, "missing"),
    (7, "wrong_type"),
    (2.5, "wrong_type"),
    (True, "wrong_type"),
    ({"text": "q"}, "wrong_type"),
    (["a", "b"], "wrong_type"),
]


def _reason(role: str, kind: str) -> str:
    return f"missing_{role}" if kind == "missing" else kind


@pytest.mark.parametrize(("value", "kind"), BAD_TEXT)
def test_a_bad_question_reads_the_same_in_every_command(value: Any, kind: str, tmp_path: Path):
    want = _reason("question", kind)
    _, bad = normalize_problems(
        [{"question": value, "answer": "2"}], ProblemsConfig(source="file"), "f"
    )
    assert [b[R.REASON] for b in bad] == [want]
    _, bad = traces_from_rows([{"question": value, "cot": "A. B.", "answer": "2"}])
    assert [b[R.REASON] for b in bad] == [want]
    _, bad = check_prefix_rows(
        [{R.PROBLEM_ID: "a", R.QUESTION: value, R.ANSWER: "2", R.PREFIX: "A."}]
    )
    assert [b[R.REASON] for b in bad] == [want]
    _, why = read_method_row({R.QUESTION: value, R.PREFIX: "A.", R.CONTINUATION: "B."}, "palign")
    assert why is not None and why[0] == want
    if kind == "wrong_type":  # a question never becomes its repr, and the detail names the field
        assert "question" in why[1] and "not text" in why[1]
        src = tmp_path / "g.jsonl"
        src.write_text(json.dumps({"prompt_ori": value, "answer": "1", "output": "x"}) + "\n")
        problems, _, bad = generations_from_file(str(src), "prompt_ori", "answer", "output")
        assert not problems and [b[R.REASON] for b in bad] == ["wrong_type"]


@pytest.mark.parametrize(("value", "kind"), BAD_TEXT)
def test_a_bad_prompt_or_prefix_is_never_stringified(value: Any, kind: str):
    items, bad = prompt_items([{"prompt": value}], "prompt", "")
    assert not items and [b[R.REASON] for b in bad] == [_reason("prompt", kind)]
    assert "'prompt'" in bad[0][R.DETAIL]
    _, bad = check_prefix_rows(
        [{R.PROBLEM_ID: "a", R.QUESTION: "Q?", R.ANSWER: "2", R.PREFIX: value}]
    )
    assert [b[R.REASON] for b in bad] == [_reason("prefix", kind)]


@pytest.mark.parametrize(
    ("gold", "reason"),
    [
        ({"v": "27"}, "wrong_type"),
        ([5], "wrong_type"),
        (True, "wrong_type"),
        (math.nan, "missing_answer"),
    ],
)
def test_a_bad_gold_is_quarantined_by_align_grade_and_sft_data(gold: Any, reason: str, tmp_path):
    _, bad = check_prefix_rows(
        [{R.PROBLEM_ID: "a", R.QUESTION: "Q?", R.ANSWER: gold, R.PREFIX: "A."}]
    )
    assert [b[R.REASON] for b in bad] == [reason]
    _, why = read_method_row({R.QUESTION: "Q?", R.ANSWER: gold, R.COT: "A."}, "full_cot")
    assert why is not None and why[0] == reason
    src = tmp_path / "g.jsonl"
    src.write_text(json.dumps({"answer": gold, "output": "\\boxed{27}"}) + "\n")
    problems, _, bad = generations_from_file(str(src), "q", "answer", "output")
    assert not problems and [b[R.REASON] for b in bad] == [reason]


def test_gold_in_a_list_is_the_answer_everywhere(tmp_path: Path) -> None:
    """["5"] is 5 (the problems stage's reading), never the text "['5']" that Eq. 9 would compare against."""
    ok, _ = check_prefix_rows(
        [{R.PROBLEM_ID: "a", R.QUESTION: "Q?", R.ANSWER: ["5"], R.PREFIX: "A."}]
    )
    assert ok[0][R.ANSWER] == "5"
    row, why = read_method_row({R.QUESTION: "Q?", R.ANSWER: '["5"]', R.COT: "A."}, "full_cot")
    assert why is None and row[R.ANSWER] == "5"
    traces, _ = traces_from_rows([{"question": "Q?", "cot": "A. B.", "answer": ["5"]}])
    assert traces[0][R.ANSWER] == "5"


def test_traces_are_decoded_and_split_as_the_problems_stage_does() -> None:
    r1 = "First. Then.</think>\n\nThe answer is \\boxed{2}."
    s1k = json.dumps(["We add. Done."])  # s1K's trajectories as the text of a one-element list
    traces, bad = traces_from_rows(
        [{"question": "Q?", "cot": r1}, {"question": "Q?", "cot": s1k}], id_field=""
    )
    assert not bad and [t[R.COT] for t in traces] == ["First. Then.", "We add. Done."]
    row, why = read_method_row({R.QUESTION: "Q?", R.ANSWER: "2", R.COT: r1}, "full_cot")
    assert why is None and row[R.COT] == "First. Then."
    problems, _ = normalize_problems(
        [{"question": "Q?", "answer": "2", "t": r1}],
        ProblemsConfig(source="file", trace_field="t"),
        "f",
    )
    assert problems[0][R.COT] == "First. Then."


def test_a_repeated_id_is_quarantined_in_every_command(tmp_path: Path) -> None:
    rows = [{"id": "x", "question": "Q?", "cot": "A. B.", "answer": "1"}] * 2
    traces, bad = traces_from_rows(rows, id_field="id")
    assert len(traces) == 1 and [b[R.REASON] for b in bad] == ["duplicate_problem_id"]
    items, bad = prompt_items(
        [{"id": 3, "prompt": "a"}, {"id": "3", "prompt": "b"}], "prompt", "id"
    )
    assert [i[R.PROMPT] for i in items] == ["a"] and bad[0][R.REASON] == "duplicate_problem_id"
    prefix = {R.PROBLEM_ID: "x", R.QUESTION: "Q?", R.ANSWER: "1", R.PREFIX: "A."}
    ok, bad = check_prefix_rows([prefix, prefix])
    assert len(ok) == 1 and bad[0][R.REASON] == "duplicate_problem_id"
    src = tmp_path / "g.jsonl"
    src.write_text(
        "".join(json.dumps({"id": 1, "answer": "1", "output": o}) + "\n" for o in ("a", "b"))
    )
    problems, gens, bad = generations_from_file(str(src), "q", "answer", "output", "id")
    assert [g[R.GENERATIONS] for g in gens] == [["a"]] and bad[0][
        R.REASON
    ] == "duplicate_problem_id"


def test_ids_are_read_one_way() -> None:
    assert read_id({"id": 7.0}, "id", 3).value == "7"  # a pandas column with a gap stores floats
    assert read_id({"id": math.nan}, "id", 3).value == "3"  # no id: the row number
    assert read_id({}, "", 3).value == "3"
    bad = read_id({"id": {"a": 1}}, "id", 3)
    assert bad.reason == "wrong_type" and bad.value == "3" and "'id'" in bad.detail


def test_grade_reads_a_serialised_list_of_samples_and_keeps_blank_ones(tmp_path: Path) -> None:
    src = tmp_path / "g.jsonl"
    rows = [
        {"answer": "1", "output": repr(["\\boxed{1}", "\\boxed{2}"])},  # a CSV round-trip of a list
        {"answer": "1", "output": ["\\boxed{1}", ""]},  # an empty sample is a sample (graded wrong)
        {"answer": "1", "output": ["\\boxed{1}", None]},
        {"answer": "1", "output": "['\\boxed{1}', 'cut"},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    problems, gens, bad = generations_from_file(str(src), "q", "answer", "output")
    assert [g[R.GENERATIONS] for g in gens] == [["\\boxed{1}", "\\boxed{2}"], ["\\boxed{1}", ""]]
    assert [b[R.REASON] for b in bad] == ["missing_output", "output_is_serialised_list"]


def test_read_text_unwraps_lists_only_where_asked() -> None:
    assert read_text(["only"], "f", "r", lists=True).value == "only"
    assert read_text(["a", "b"], "f", "r", lists=True, index=1).value == "b"
    assert read_text(["only"], "f", "r").reason == "wrong_type"
    assert read_text("['x'", "f", "r", lists=True).reason == "r_is_serialised_list"


def test_sft_data_method_rows_name_the_field_and_keep_a_missing_one_apart() -> None:
    _, why = read_method_row({R.QUESTION: "Q?", R.PREFIX: "A.", R.CONTINUATION: ["x"]}, "palign")
    assert why is not None and why[0] == "wrong_type" and "'continuation'" in why[1]
    _, why = read_method_row({R.QUESTION: "Q?", R.PREFIX: "A."}, "palign")
    assert why == ("missing_continuation", "no text in field 'continuation'")
