"""Problem loading (field mapping, gold normalisation, quarantine accounting) and the built-in set."""

from __future__ import annotations

import json
import re
from fractions import Fraction
from pathlib import Path

import pytest

from palign_ray.config import ProblemsConfig
from palign_ray.problems import (
    TEMPLATES,
    builtin_problems,
    content_id,
    load_problems,
    normalize_problems,
    quarantine_path,
    retention,
)
from palign_ray.sentences import split_sentences


def _write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_field_mapping_gold_normalisation_and_bad_rows(tmp_path: Path) -> None:
    src = _write_jsonl(tmp_path / "p.jsonl", [
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
    ])
    rows, bad = load_problems(ProblemsConfig(source="file", num_problems=0), src)
    assert [r["answer"] for r in rows] == ["25", "12", "1234", "\\frac{1}{2}"]
    assert rows[0]["problem_id"] == "a1"
    assert rows[1]["problem_id"] == content_id("Float gold?")
    assert rows[2]["solution"].endswith("#### 1,234")  # GSM8K's worked solution is kept as the solution
    reasons = sorted(b["reason"] for b in bad)
    assert reasons == sorted(["missing_answer", "missing_question", "wrong_type", "wrong_type", "duplicate_problem_id",
                              "invalid_json", "not_an_object"])
    assert len(rows) + len(bad) == 11  # every line leaves as a problem or a quarantine row
    assert all(b["detail"] for b in bad)


def test_explicit_fields_and_limit(tmp_path: Path) -> None:
    src = _write_jsonl(tmp_path / "p.jsonl", [{"q": f"Q{i}", "gold": i, "key": f"k{i}", "trace": f"<think>t{i}</think>"} for i in range(5)])
    cfg = ProblemsConfig(source="file", num_problems=3, question_field="q", answer_field="gold", id_field="key", trace_field="trace")
    rows, bad = load_problems(cfg, src)
    assert [(r["problem_id"], r["question"], r["answer"], r["cot"]) for r in rows] == [
        ("k0", "Q0", "0", "<think>t0</think>"), ("k1", "Q1", "1", "<think>t1</think>"), ("k2", "Q2", "2", "<think>t2</think>")]
    assert bad == []


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
    with pa.OSFile(str(hf / "data-00000-of-00001.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    (hf / "state.json").write_text("{}")
    (hf / "dataset_info.json").write_text("{}")
    rows2, _ = load_problems(ProblemsConfig(source="file", num_problems=0), hf)
    assert [r["question"] for r in rows2] == ["P1", "P2"]


def test_gsm8k_file(shared_data: str) -> None:
    rows, bad = load_problems(ProblemsConfig(source="file", num_problems=32), Path(shared_data) / "gsm8k" / "gsm8k_test.jsonl")
    assert len(rows) == 32 and bad == []
    assert rows[0]["answer"] == "18" and rows[0]["question"].startswith("Janet")
    assert len({r["problem_id"] for r in rows}) == 32


def test_missing_file_and_empty_path() -> None:
    with pytest.raises(FileNotFoundError):
        load_problems(ProblemsConfig(source="file"), "/nonexistent/problems.jsonl")
    with pytest.raises(ValueError, match="problems.path"):
        load_problems(ProblemsConfig(source="file", path=""))


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
        decisive = r["solution"][spans[k][0]: spans[k][1]]
        assert f"= {r['answer']}" in decisive  # the sentence that computes the answer


def test_load_builtin_default_and_retention_helpers(tmp_path: Path) -> None:
    rows, bad = load_problems(ProblemsConfig())
    assert len(rows) == 32 and bad == []
    again, _ = normalize_problems(rows, ProblemsConfig(source="file", num_problems=0), "mem")
    assert [r["answer"] for r in again] == [r["answer"] for r in rows]
    s = retention("x", 3, [{"problem_id": "a"}, {"problem_id": "a"}], [{"problem_id": "b", "reason": "r"}])
    assert s["num_problems_out"] == 1 and s["reasons"] == {"r": 1} and s["retention"] == pytest.approx(1 / 3, abs=1e-3)
    assert quarantine_path(tmp_path / "t.parquet").name == "t.quarantine.parquet"
    assert quarantine_path(tmp_path / "shards").name == "shards.quarantine.parquet"
