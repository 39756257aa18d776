"""Benchmark files load through the mapping table; user files by field names; bad rows quarantined."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from palign_ray.benchmarks import BENCHMARKS, load_benchmark

EXPECTED = {"math500": 500, "aime24": 30, "aime25": 30, "amc12": 83, "amc23": 40, "gsm8k": 1319}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shared_benchmarks_load_completely(name: str, shared_data: str) -> None:
    problems, bad = load_benchmark(name, shared_data)
    assert bad == []
    assert len(problems) == EXPECTED[name]
    assert len({p["problem_id"] for p in problems}) == len(problems)
    assert all(p["question"].strip() and p["answer"] and p["benchmark"] == name for p in problems)


def test_answers_are_normalised(shared_data: str) -> None:
    aime24, _ = load_benchmark("aime24", shared_data)
    assert aime24[0]["answer"] == "204"
    assert all(not a.startswith("0") for a in (p["answer"] for p in aime24))  # "025" → "25"
    amc, _ = load_benchmark("amc12", shared_data)
    assert amc[0]["answer"] == "142"  # 142.0
    gsm, _ = load_benchmark("gsm8k", shared_data, num_problems=3)
    assert [p["answer"] for p in gsm] == ["18", "3", "70000"]  # after "####", commas removed
    math500, _ = load_benchmark("math500", shared_data, num_problems=1)
    assert math500[0]["problem_id"] == "math500/test/precalculus/807.json"
    assert math500[0]["answer"] == r"\left( 3, \frac{\pi}{2} \right)"


def test_user_file_with_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    rows = [
        {"q": "1+1?", "gold": 2, "key": "a"},
        {"q": "", "gold": 3, "key": "b"},  # no question
        {"q": "2+2?", "gold": None, "key": "c"},  # no answer
        {"q": "3+3?", "gold": float("nan"), "key": "d"},
        {"q": "4+4?", "gold": "008", "key": "a"},  # duplicate id
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    problems, bad = load_benchmark(
        str(path), "/nonexistent", question_field="q", answer_field="gold", id_field="key"
    )
    assert [p["problem_id"] for p in problems] == ["mine/a"]
    assert problems[0]["answer"] == "2"
    assert sorted(b["reason"] for b in bad) == [
        "duplicate_id",
        "invalid_json",
        "missing_answer",
        "missing_answer",
        "missing_question",
    ]
    assert len(problems) + len(bad) == len(rows) + 1  # every line lands somewhere
    assert any("mine.jsonl:2" in b["detail"] and "'q'" in b["detail"] for b in bad)


def test_user_file_guesses_fields_and_uses_solutions(tmp_path: Path) -> None:
    path = tmp_path / "sols.jsonl"
    path.write_text(
        json.dumps({"problem": "x?", "solution": r"so $\boxed{7}$"})
        + "\n"
        + json.dumps({"problem": "y?", "solution": "no box"})
        + "\n"
    )
    problems, bad = load_benchmark(str(path), "")
    assert [(p["problem_id"], p["answer"]) for p in problems] == [("sols/0", "7")]
    assert [b["reason"] for b in bad] == ["missing_answer"]


def test_unknown_name_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="neither a known name"):
        load_benchmark("nope", tmp_path)
    with pytest.raises(FileNotFoundError, match="eval.data_dir"):
        load_benchmark("gsm8k", tmp_path)


def test_builtin_benchmark() -> None:
    problems, bad = load_benchmark("builtin", "", num_problems=5, seed=3)
    assert len(problems) == 5 and bad == []
    assert all(p["problem_id"].startswith("builtin/") and p["answer"] for p in problems)
    assert problems == load_benchmark("builtin", "", num_problems=5, seed=3)[0]
    heldout, _ = load_benchmark("builtin", "", num_problems=5, seed=3, builtin_split="heldout")
    assert heldout != problems and all("heldout" in p["problem_id"] for p in heldout)


def test_mapping_table_paths_exist(shared_data: str) -> None:
    for spec in BENCHMARKS.values():
        assert (Path(shared_data) / spec.path).is_file()


def test_long_answers_stay_answers(tmp_path: Path) -> None:
    """MATH-500's 17-term polynomial answer is an answer, not a worked solution (shared gold helper)."""
    poly = "x^8 + x^7 + x^6 + x^5 + x^4 + x^3 + x^2 + x + 1"
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"problem": "p?", "answer": poly}) + "\n")
    problems, bad = load_benchmark(str(path), "")
    assert [p["answer"] for p in problems] == [poly] and bad == []
