"""Field values as datasets store them: list unwrapping, serialised lists, think tags, final answers, row filters."""

from __future__ import annotations

import json

import pytest

from palign_ray.fields import (
    final_answer,
    looks_like_solution,
    marked_final_answer,
    parse_filter,
    pick,
    split_think,
)
from palign_ray.teacher import strip_think


def test_pick_lists_and_scalars() -> None:
    assert pick(["a", "b"], 0, "t", "trace").value == "a"
    assert pick(["a", "b"], 1, "t", "trace").value == "b"
    assert pick(("a",), -1, "t", "trace").form == "list"
    assert (
        pick(27.0, 0, "answer", "answer").value == 27.0
    )  # numbers pass through for gold normalisation
    assert pick("plain text", 0, "t", "trace").form == "string"
    assert pick([], 0, "t", "trace").value is None  # an empty list is a missing value, not an error
    out = pick(["a"], 3, "t", "trace")
    assert out.value is None and out.reason == "index_out_of_range" and "1 element" in out.detail


def test_serialised_list_is_decoded_never_passed_verbatim() -> None:
    for trace in ("Line one.\nLine two with \\boxed{5}.", "Line one.\nIt's 'quoted'."):
        as_repr = repr(
            [trace]
        )  # what a CSV round-trip of a list column leaves: "['Line one.\\nLine ...']"
        assert as_repr[:2] in ("['", '["') and "\\n" in as_repr
        decoded = pick(as_repr, 0, "thinking_trajectories", "trace")
        assert (
            decoded.value == trace and decoded.form == "serialised_list" and "\n" in decoded.value
        )
    assert pick(json.dumps(["x", "y"]), 1, "t", "trace").value == "y"  # a JSON list in a string
    for broken in ("['cut off by the CSV cell limit", "['a', 1]", '["a", ["nested"]]'):
        out = pick(broken, 0, "t", "trace")
        assert out.value is None and out.reason == "trace_is_serialised_list", broken
    assert pick("['x'", 0, "gold", "answer").reason == "answer_is_serialised_list"
    # Intervals and other bracketed answers are not lists of strings in disguise.
    assert pick("[0, 1]", 0, "answer", "answer").value == "[0, 1]"
    assert pick("[Thinking] then text", 0, "t", "trace").value == "[Thinking] then text"


@pytest.mark.parametrize(
    ("text", "reasoning", "after", "case"),
    [
        ("<think>\nreason\n</think>\nThe answer is 3.", "reason", "The answer is 3.", "think_tags"),
        (
            "Alright, so...\n**Final Answer**\n\\boxed{7}\n</think>\n\nSummary \\boxed{7}",
            "Alright, so...\n**Final Answer**\n\\boxed{7}",
            "Summary \\boxed{7}",
            "close_only",
        ),
        ("<think>unclosed reasoning", "unclosed reasoning", "", "open_only"),
        ("<think></think>after", "after", "", "empty_think"),
        ("<think> </think>", "", "", "empty_think"),
        ("no tags at all", "no tags at all", "", "no_tags"),
    ],
)
def test_split_think_cases(text: str, reasoning: str, after: str, case: str) -> None:
    split = split_think(text)
    assert (split.reasoning, split.after, split.case) == (reasoning, after, case)
    assert strip_think(text) == reasoning.strip()  # the teacher's rule is the same rule


def test_final_answer_from_solutions() -> None:
    assert final_answer("Work.\n\nThe final answer is \\( \\boxed{ m = 1529 } \\).") == "m = 1529"
    assert final_answer("Step.\n#### 1,234") == "1234"
    assert final_answer("Reasoning about the options.\n\nAnswer: D") == "D"
    assert final_answer("Long derivation\n### Final answer: 14 Pa") == "14 Pa"
    assert final_answer("Long derivation\n**Answer:** $x = 2$.") == "$x = 2$"
    assert final_answer("We conclude.\nThe answer is 7.") == "7"
    # Crossword style: the answer line comes first and an explanation follows; nothing marks a final line.
    assert (
        final_answer("### Answer: ATTUNE \n ### Explanation: Definition: Adjust\nHidden in it")
        is None
    )
    assert (
        final_answer("Applying the operator leads to the wave equation.\nThus A satisfies it.")
        is None
    )
    assert (
        marked_final_answer(
            "Answer: the one that satisfies the separability criterion for all two qubit states here"
        )
        is None
    )
    assert marked_final_answer("") is None


def test_looks_like_solution() -> None:
    for answer in (
        "173",
        "ABD",
        "\\frac{507}{595}",
        "(3, -2)",
        "\\left( \\frac{1}{2}, \\frac{\\sqrt{3}}{2} \\right)",
        "10.02",
    ):
        assert not looks_like_solution(answer), answer
    assert looks_like_solution("Applying d on the Proca equation\nleads to A = 0")
    assert looks_like_solution(
        "The correct answer is 14 Pa, using the equation deltaG = - RTlnK with R the gas constant"
    )


def test_parse_filter() -> None:
    assert parse_filter("") is None
    rule = parse_filter("cot_type=math")
    assert (
        rule.keeps({"cot_type": "math"})
        and not rule.keeps({"cot_type": "science"})
        and not rule.keeps({})
    )
    both = parse_filter("cot_type=math|science")
    assert both.keeps({"cot_type": "science"}) and not both.keeps({"cot_type": "crossword"})
    nocross = parse_filter("cot_type!=crossword")
    assert (
        nocross.keeps({"cot_type": "math"})
        and nocross.keeps({})
        and not nocross.keeps({"cot_type": "crossword"})
    )
    assert parse_filter("level=5").keeps({"level": 5})  # values compare as text
    assert nocross.describe() == "cot_type!=crossword"
    for bad in ("cot_type", "=math", "cot_type="):
        with pytest.raises(ValueError, match="col=value"):
            parse_filter(bad)


def test_gold_answer_is_shared_by_problems_and_benchmarks() -> None:
    """One gold reading (issue 19.5); benchmark answer fields keep long answers as answers."""
    from palign_ray.fields import gold_answer

    poly = "x^8 + x^7 + x^6 + x^5 + x^4 + x^3 + x^2 + x + 1"
    assert gold_answer("Janet has 3. #### 1,234", "answer").answer == "1234"
    assert gold_answer(["\\boxed{7} done", "x"], "answer").answer == "7"
    assert gold_answer(None, "answer", solution="so \\boxed{5}").answer == "5"
    assert gold_answer(poly, "answer").reason == "gold_not_extractable"  # training data: prose
    assert gold_answer(poly, "answer", prose_is_solution=False).answer == poly
    assert gold_answer(None, "answer").reason == "missing_answer"
    assert gold_answer(True, "answer").reason == "wrong_type"
