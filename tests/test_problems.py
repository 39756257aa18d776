"""Problem loading (field mapping, gold normalisation, quarantine accounting) and the built-in set."""

from __future__ import annotations

import json
import re
from fractions import Fraction
from pathlib import Path

import pytest

from palign_ray.artifacts import quarantine_path, retention
from palign_ray.builtin import TEMPLATES, builtin_problems
from palign_ray.config import ProblemsConfig
from palign_ray.problems import (
    content_id,
    load_problems,
    load_summary,
    normalize_problems,
)
from palign_ray.sentences import split_sentences


def _write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_field_mapping_gold_normalisation_and_bad_rows(tmp_path: Path) -> None:
    src = _write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"problem": "AIME style?", "answer": "025", "id": "a1"},
            {"question": "Float gold?", "answer": 12.0},
            {"prompt": "GSM8K style?", "answer": "Work: 3 + 4 = <<3+4=7>>7.\n#### 1,234"},
            {"problem": "Only a solution?", "solution": "So it is $\\boxed{\\frac{1}{2}}$."},
            {"problem": "No answer at all?"},
            {"answer": "3"},
            {"problem": ["not", "text"], "answer": "3"},
            {"problem": "Dict answer?", "answer": {"x": 1}},
            {"problem": "Repeat id", "answer": "1", "id": "a1"},
            "this line is not json",
            "[1, 2]",
        ],
    )
    rows, bad = load_problems(ProblemsConfig(source="file", num_problems=0), src)
    assert [r["answer"] for r in rows] == ["25", "12", "1234", "\\frac{1}{2}"]
    assert rows[0]["problem_id"] == "a1"
    assert rows[1]["problem_id"] == content_id("Float gold?")
    assert rows[2]["solution"].endswith(
        "#### 1,234"
    )  # GSM8K's worked solution is kept as the solution
    reasons = sorted(b["reason"] for b in bad)
    assert reasons == sorted(
        [
            "missing_answer",
            "missing_question",
            "wrong_type",
            "wrong_type",
            "duplicate_problem_id",
            "invalid_json",
            "not_an_object",
        ]
    )
    assert len(rows) + len(bad) == 11  # every line leaves as a problem or a quarantine row
    assert all(b["detail"] for b in bad)


def test_explicit_fields_and_limit(tmp_path: Path) -> None:
    src = _write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"q": f"Q{i}", "gold": i, "key": f"k{i}", "trace": f"<think>t{i}</think>"}
            for i in range(5)
        ],
    )
    cfg = ProblemsConfig(
        source="file",
        num_problems=3,
        question_field="q",
        answer_field="gold",
        id_field="key",
        trace_field="trace",
    )
    rows, bad = load_problems(cfg, src)
    assert [(r["problem_id"], r["question"], r["answer"], r["cot"]) for r in rows] == [
        ("k0", "Q0", "0", "t0"),
        ("k1", "Q1", "1", "t1"),
        ("k2", "Q2", "2", "t2"),
    ]  # think tags split at load
    assert {r["think_split"] for r in rows} == {"think_tags"} and bad == []


def test_content_id_is_stable_and_whitespace_insensitive() -> None:
    assert content_id("What is 1+1?") == content_id("  What is\n1+1? ")
    assert content_id("What is 1+1?") != content_id("What is 1+2?")


def test_parquet_and_arrow_dataset_dir(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([{"problem": "P1", "answer": 7}, {"problem": "P2", "answer": 8}])
    pq.write_table(table, tmp_path / "p.parquet")
    rows, bad = load_problems(ProblemsConfig(source="file", num_problems=0), tmp_path / "p.parquet")
    assert [r["answer"] for r in rows] == ["7", "8"] and bad == []
    hf = tmp_path / "hf"  # the layout of datasets.save_to_disk (Arrow stream + state.json)
    hf.mkdir()
    with (
        pa.OSFile(str(hf / "data-00000-of-00001.arrow"), "wb") as sink,
        pa.ipc.new_stream(sink, table.schema) as w,
    ):
        w.write_table(table)
    (hf / "state.json").write_text("{}")
    (hf / "dataset_info.json").write_text("{}")
    rows2, _ = load_problems(ProblemsConfig(source="file", num_problems=0), hf)
    assert [r["question"] for r in rows2] == ["P1", "P2"]


def test_gsm8k_file(shared_data: str) -> None:
    rows, bad = load_problems(
        ProblemsConfig(source="file", num_problems=32),
        Path(shared_data) / "gsm8k" / "gsm8k_test.jsonl",
    )
    assert len(rows) == 32 and bad == []
    assert rows[0]["answer"] == "18" and rows[0]["question"].startswith("Janet")
    assert len({r["problem_id"] for r in rows}) == 32


def test_missing_file_and_empty_path() -> None:
    with pytest.raises(FileNotFoundError):
        load_problems(ProblemsConfig(source="file"), "/nonexistent/problems.jsonl")
    with pytest.raises(ValueError, match="problems.path"):
        load_problems(ProblemsConfig(source="file", path=""))


# ------------------------------------------------------------------ field values as datasets store them (issue 18)

TRACE = "First we add.\nThen we check: 2 + 3 = 5."


def test_list_and_serialised_list_traces(tmp_path: Path) -> None:
    """s1K's list-of-strings trace field: was quarantined as missing_trace (list) or ingested as
    "['...\\n...']" garbage (a CSV round-trip's repr string); now decoded, or quarantined, never verbatim."""
    src = _write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"question": "list?", "answer": "5", "tt": [TRACE, "second sample"]},
            {"question": "repr?", "answer": "5", "tt": repr([TRACE])},
            {"question": "json string?", "answer": "5", "tt": json.dumps([TRACE])},
            {"question": "cut repr?", "answer": "5", "tt": repr([TRACE])[:-3]},
            {"question": "index out of range?", "answer": "5", "tt": []},
            {"question": "plain?", "answer": "5", "tt": TRACE},
        ],
    )
    rows, bad = load_problems(ProblemsConfig(source="file", num_problems=0, trace_field="tt"), src)
    assert [r["cot"] for r in rows] == [TRACE, TRACE, TRACE, TRACE]
    assert [r["trace_format"] for r in rows] == [
        "list",
        "serialised_list",
        "serialised_list",
        "string",
    ]
    assert [(b["reason"], b["problem_id"]) for b in bad] == [
        ("trace_is_serialised_list", content_id("cut repr?")),
        ("missing_trace", content_id("index out of range?")),
    ]
    second, _ = load_problems(
        ProblemsConfig(source="file", num_problems=1, trace_field="tt", trace_index=1), src
    )
    assert second[0]["cot"] == "second sample"
    _, far = load_problems(
        ProblemsConfig(source="file", num_problems=1, trace_field="tt", trace_index=5), src
    )
    assert far[0]["reason"] == "index_out_of_range"


def test_r1_style_think_split_keeps_the_answer_part(tmp_path: Path) -> None:
    r1 = "Alright, so 2 + 3.\n**Final Answer**\n\\boxed{5}\n</think>\n\nThe sum is \\boxed{5}."
    src = _write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"question": "r1?", "answer": 5.0, "code": [r1]},
            {"question": "tags?", "answer": "5", "code": ["<think>inside</think>after"]},
            {"question": "none?", "answer": "5", "code": [TRACE]},
        ],
    )
    rows, bad = load_problems(
        ProblemsConfig(source="file", num_problems=0, trace_field="code"), src
    )
    assert bad == [] and rows[0]["answer"] == "5"  # a float gold (AMC's 27.0) normalised
    assert (
        rows[0]["cot"] == "Alright, so 2 + 3.\n**Final Answer**\n\\boxed{5}"
        and rows[0]["after_think"] == "The sum is \\boxed{5}."
    )
    assert [r["think_split"] for r in rows] == ["close_only", "think_tags", "no_tags"]
    assert load_summary(rows, bad)["think_split"] == {
        "close_only": 1,
        "think_tags": 1,
        "no_tags": 1,
    }


def test_answer_lists(tmp_path: Path) -> None:
    src = _write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"question": "strings?", "answer": ["025", "x"]},
            {"question": "repr?", "answer": "['7']"},
            {"question": "numbers?", "answer": [10]},
        ],
    )
    rows, bad = load_problems(ProblemsConfig(source="file", num_problems=0), src)
    assert [r["answer"] for r in rows] == ["25", "7"]
    assert [(b["reason"], "list of int" in b["detail"]) for b in bad] == [("wrong_type", True)]


def test_gold_from_worked_solutions_with_group_counts(tmp_path: Path) -> None:
    """A worked solution in the answer field was taken verbatim as gold; now its final answer, else quarantine."""
    src = _write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"question": "aime?", "solution": "173", "cot_type": "math"},
            {
                "question": "boxed?",
                "solution": "Work it out.\nThe final answer is \\(\\boxed{82}\\)",
                "cot_type": "math",
            },
            {
                "question": "gpqa?",
                "solution": "The operator gives the wave equation.\nSo D holds.\n\nAnswer: D",
                "cot_type": "science",
            },
            {
                "question": "paragraph?",
                "solution": "Applying the operator on the equation leads to\nthe constraint.",
                "cot_type": "science",
            },
            {
                "question": "crossword?",
                "solution": "### Answer: ATTUNE \n ### Explanation: Definition: Adjust",
                "cot_type": "crossword",
            },
        ],
    )
    rows, bad = load_problems(
        ProblemsConfig(source="file", num_problems=0, answer_field="solution"), src
    )
    assert [r["answer"] for r in rows] == ["173", "82", "D"]
    assert rows[1]["solution"].startswith(
        "Work it out."
    )  # the worked solution is kept as the solution
    assert [(b["reason"], b["group"]) for b in bad] == [
        ("gold_not_extractable", "science"),
        ("gold_not_extractable", "crossword"),
    ]
    assert "no \\boxed{}" in bad[0]["detail"]
    assert load_summary(rows, bad)["by_group"] == {
        "crossword": {"gold_not_extractable": 1},
        "math": {"ingested": 2},
        "science": {"ingested": 1, "gold_not_extractable": 1},
    }
    by_source, _ = load_problems(
        ProblemsConfig(
            source="file", num_problems=0, answer_field="solution", group_field="question"
        ),
        src,
    )
    assert by_source[0]["group"] == "aime?"


def test_row_filter_quarantines_the_rest(tmp_path: Path) -> None:
    src = _write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"question": f"q{i}?", "answer": i, "cot_type": t}
            for i, t in enumerate(["math", "science", "math", "crossword"])
        ],
    )
    rows, bad = load_problems(
        ProblemsConfig(source="file", num_problems=0, filter="cot_type=math"), src
    )
    assert [r["question"] for r in rows] == ["q0?", "q2?"]
    assert [(b["reason"], b["group"]) for b in bad] == [
        ("filtered_out", "science"),
        ("filtered_out", "crossword"),
    ]
    assert "cot_type='science'" in bad[0]["detail"] and bad[0]["problem_id"] == content_id("q1?")
    rows, bad = load_problems(
        ProblemsConfig(source="file", num_problems=0, filter="cot_type!=crossword"), src
    )
    assert len(rows) == 3 and len(bad) == 1
    with pytest.raises(ValueError, match="no row .* has a column 'kind'"):
        load_problems(ProblemsConfig(source="file", num_problems=0, filter="kind=math"), src)
    with pytest.raises(ValueError, match="col=value"):
        load_problems(ProblemsConfig(source="file", num_problems=0, filter="cot_type"), src)


def test_loaded_rows_share_one_set_of_keys(tmp_path: Path) -> None:
    """Parquet takes a table's columns from its first row: every row and every quarantine row has them all."""
    src = _write_jsonl(
        tmp_path / "p.jsonl",
        [
            "not json",
            {"question": "a?", "answer": 1},
            {"question": "b?", "answer": 2, "source": "x"},
            {"question": "c?"},
        ],
    )
    rows, bad = load_problems(ProblemsConfig(source="file", num_problems=0), src)
    assert len({tuple(r) for r in rows}) == 1 and len({tuple(b) for b in bad}) == 1
    assert rows[0]["group"] is None and rows[1]["group"] == "x"


# ------------------------------------------------------------------ built-in problems


def _solve(template: str, q: str) -> Fraction:
    """An independent solver per template, reading the numbers back from the question text."""
    n = [int(x) for x in re.findall(r"\d+", q)]
    if template == "shopping":
        a, pa, b, pb, bill = n
        return Fraction(bill - a * pa - b * pb)
    if template == "rate_time":
        rate, hours, days = n
        return Fraction(rate * hours * days)
    if template == "ages":
        gap, years, total = n
        return Fraction(total - gap - 2 * years, 2)
    if template == "linear":
        m, c, res = n
        return Fraction(res - c, m)
    if template == "percent":
        price, pct, count = n
        return count * (price - Fraction(price * pct, 100))
    if template == "distance":
        v1, t1, v2, t2 = n
        return Fraction(v1 * t1 + v2 * t2)
    if template == "sharing":
        batches, per, kept, friends = n
        return Fraction(batches * per - kept, friends)
    raise AssertionError(template)


def test_builtin_answers_recomputed_from_question() -> None:
    rows = builtin_problems(700, seed=3)
    assert {r["template"] for r in rows} == set(TEMPLATES)
    for r in rows:
        value = _solve(r["template"], r["question"])
        assert value.denominator == 1 and value > 0, r
        assert r["answer"] == str(value.numerator), r
        assert r["solution"].endswith(f"\\boxed{{{r['answer']}}}.")


def test_builtin_deterministic_and_seeded() -> None:
    assert builtin_problems(20, 5) == builtin_problems(20, 5)
    assert builtin_problems(20, 5) != builtin_problems(20, 6)
    assert builtin_problems(10, 5) == builtin_problems(20, 5)[:10]
    ids = [r["problem_id"] for r in builtin_problems(50, 1)]
    assert len(set(ids)) == 50


def test_builtin_decisive_sentence_matches_the_splitter() -> None:
    for r in builtin_problems(70, 2):
        spans = split_sentences(r["solution"])
        k = r["decisive_sentence"]
        assert 0 <= k < len(spans) - 1  # never the boxed line itself
        # The project's splitter and the recorded offset agree on where the decisive sentence ends.
        assert len(r["solution"][: spans[k][1]].rstrip()) == r["decisive_char_end"]
        decisive = r["solution"][spans[k][0] : spans[k][1]]
        assert f"= {r['answer']}" in decisive  # the sentence that computes the answer


def _numbers(question: str) -> tuple[str, ...]:
    return tuple(re.findall(r"[0-9]+", question))


def test_builtin_split_is_disjoint_by_parameters_whatever_the_seeds() -> None:
    train = builtin_problems(140, 0, split="train")
    heldout = builtin_problems(70, 1, split="heldout")
    assert {split_of_row(r) for r in train} == {"train"}
    assert {split_of_row(r) for r in heldout} == {"heldout"}
    # No held-out problem repeats a training problem's template and numbers (names may differ).
    seen = {(r["template"], _numbers(r["question"])) for r in train}
    assert not [r for r in heldout if (r["template"], _numbers(r["question"])) in seen]
    # Without the split the same seed draws both sides (about a fifth held out).
    sides = [split_of_row(r) for r in builtin_problems(700, 0)]
    assert 0.1 < sides.count("heldout") / len(sides) < 0.3
    assert builtin_problems(20, 0) == builtin_problems(20, 0, split="all")  # default unchanged
    ids = [r["problem_id"] for r in train + heldout]
    assert len(set(ids)) == len(ids)
    assert {r["template"] for r in heldout} == set(TEMPLATES)
    cfg = ProblemsConfig(num_problems=14, builtin_split="train", builtin_style="long")
    assert load_problems(cfg)[0] == builtin_problems(14, 0, "train", "long")  # config → generator


def split_of_row(row: dict[str, object]) -> str:
    from palign_ray.builtin import Worked, split_of

    return split_of(Worked(str(row["template"]), str(row["question"]), 0, (), 0))


def test_builtin_long_style_restates_errs_checks_and_keeps_the_decisive_sentence() -> None:
    short = builtin_problems(70, 2)
    long = builtin_problems(70, 2, style="long")
    for s, r in zip(short, long, strict=True):
        assert (s["question"], s["answer"]) == (r["question"], r["answer"])
        spans = split_sentences(r["solution"])
        assert len(spans) >= len(split_sentences(s["solution"])) + 5
        text = [r["solution"][a:b] for a, b in spans]
        assert text[0].startswith("Let me restate") and "check" in " ".join(text[-4:])
        k = r["decisive_sentence"]
        assert len(r["solution"][: spans[k][1]].rstrip()) == r["decisive_char_end"]
        # the decisive sentence is the short solution's, now after the restatement and the dead end
        assert (
            text[k] == s["solution"][slice(*split_sentences(s["solution"])[s["decisive_sentence"]])]
        )
        dead_end = [t for t in text if t.startswith("A first idea")]
        if dead_end:  # the naive sum, then "Wait," and why it is wrong
            naive = dead_end[0].rstrip(".").rsplit("= ", 1)[1]
            assert naive != r["answer"] and text[text.index(dead_end[0]) + 1].startswith("Wait,")


def test_load_builtin_default_and_retention_helpers(tmp_path: Path) -> None:
    rows, bad = load_problems(ProblemsConfig())
    assert len(rows) == 32 and bad == []
    again, _ = normalize_problems(rows, ProblemsConfig(source="file", num_problems=0), "mem")
    assert [r["answer"] for r in again] == [r["answer"] for r in rows]
    s = retention(
        "x", 3, [{"problem_id": "a"}, {"problem_id": "a"}], [{"problem_id": "b", "reason": "r"}]
    )
    assert (
        s["num_problems_out"] == 1
        and s["reasons"] == {"r": 1}
        and s["retention"] == pytest.approx(1 / 3, abs=1e-3)
    )
    assert quarantine_path(tmp_path / "t.parquet").name == "t.quarantine.parquet"
    assert quarantine_path(tmp_path / "shards").name == "shards.quarantine.parquet"


def test_the_shopping_template_draws_a_bill_for_its_largest_total() -> None:
    """9 items at 12 dollars twice is 216 dollars: the bills stopped at 200, so a 100k-problem draw
    (bench/decontam.py) died with StopIteration."""
    import random

    from palign_ray.builtin import _shopping

    class Largest(random.Random):
        def randint(self, a: int, b: int) -> int:
            return b

    w = _shopping(Largest(0))
    assert "500 dollar bill" in w.question and w.answer == 500 - 216
