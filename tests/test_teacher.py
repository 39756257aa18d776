"""Teacher stage: grading + selection policies (pure), think-tag handling, ingestion, and a real Ray Data + vLLM run."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from palign_ray.builtin import builtin_problems
from palign_ray.config import Config, ProblemsConfig, TeacherConfig
from palign_ray.problems import load_problems
from palign_ray.teacher import (
    Sample,
    grade_samples,
    ingest_traces,
    reason_counts,
    select_rows,
    select_trace,
    strip_think,
    teacher_prompt,
)


def _samples() -> list[Sample]:
    texts = [
        "Long work... so it is \\boxed{7}. Let me double check: yes \\boxed{7}.",
        "I think \\boxed{8}.",
        "7",  # right number, no box
        "Short: \\boxed{7}",
        "Also long but right \\boxed{7.0}",
    ]
    return grade_samples(texts, [40, 5, 2, 6, 30], ["stop"] * 5, "7", timeout_s=10.0)


def test_grading_of_fixed_samples() -> None:
    s = _samples()
    assert [x.correct for x in s] == [True, False, False, True, True]
    assert [x.reason for x in s] == [
        "correct",
        "wrong_answer",
        "no_boxed_answer",
        "correct",
        "correct",
    ]
    assert reason_counts(s) == "1 wrong_answer, 1 no_boxed_answer"


def test_selection_policies() -> None:
    s = _samples()
    assert select_trace(s, "shortest_correct").index == 3
    assert select_trace(s, "longest_correct").index == 0
    assert select_trace(s, "first_correct").index == 0
    assert select_trace([x for x in s if not x.correct], "shortest_correct") is None
    with pytest.raises(ValueError, match="teacher.selection"):
        select_trace(s, "best")


def test_ties_break_on_lower_index() -> None:
    s = [Sample(i, "t", 10, "stop", True, "correct") for i in range(3)]
    assert select_trace(s, "shortest_correct").index == 0
    assert select_trace(s, "longest_correct").index == 0


def test_select_rows_joins_on_id_and_quarantines_with_counts() -> None:
    probs = builtin_problems(3, 0)
    gold = [p["answer"] for p in probs]
    gens = [  # deliberately out of order
        {
            "problem_id": probs[2]["problem_id"],
            "generations": ["no box", "\\boxed{-1}"],
            "num_generated_tokens": [3, 4],
            "finish_reasons": ["length", "stop"],
            "error": "",
        },
        {
            "problem_id": probs[0]["problem_id"],
            "generations": [f"a \\boxed{{{gold[0]}}}", f"longer text \\boxed{{{gold[0]}}}"],
            "num_generated_tokens": [9, 20],
            "finish_reasons": ["stop", "stop"],
            "error": "",
        },
        {
            "problem_id": probs[1]["problem_id"],
            "generations": [],
            "num_generated_tokens": [],
            "finish_reasons": [],
            "error": "prompt_too_long: 3000 tokens",
        },
    ]
    out, quar, reasons = select_rows(probs, gens, TeacherConfig())
    assert [r["problem_id"] for r in out] == [probs[0]["problem_id"]]
    assert (
        out[0]["cot"] == f"a \\boxed{{{gold[0]}}}"
        and out[0]["num_correct"] == 2
        and out[0]["cot_tokens"] == 9
    )
    assert (
        out[0]["trace_source"] == "teacher"
        and out[0]["decisive_sentence"] == probs[0]["decisive_sentence"]
    )
    q = {x["problem_id"]: x for x in quar}
    assert (
        q[probs[2]["problem_id"]]["detail"]
        == "no_correct_sample: 1 wrong_answer, 1 no_boxed_answer"
    )
    assert q[probs[1]["problem_id"]]["reason"] == "generation_failed"
    assert len(out) + len(quar) == 3
    assert reasons == {"correct": 2, "wrong_answer": 1, "no_boxed_answer": 1}
    out2, quar2, _ = select_rows(probs, gens, TeacherConfig(use_reference_solutions=True))
    ref = [r for r in out2 if r["trace_source"] == "reference"]
    assert [r["problem_id"] for r in ref] == [probs[2]["problem_id"]] and ref[0]["cot"] == probs[2][
        "solution"
    ]
    assert len(out2) + len(quar2) == 3


def test_reference_trace_cleans_gsm8k() -> None:
    from palign_ray.teacher import reference_trace

    sol = "She has 16 - 3 = <<16-3=13>>13 eggs.\nShe makes 13 * 2 = $<<13*2=26>>26.\n#### 26"
    assert (
        reference_trace(sol, "26")
        == "She has 16 - 3 = 13 eggs.\nShe makes 13 * 2 = $26.\nThe final answer is \\boxed{26}."
    )
    assert reference_trace("So \\boxed{5}.", "5") == "So \\boxed{5}."


def test_strip_think() -> None:
    assert strip_think("<think>\nreason here\n</think>\nThe answer is 3.") == "reason here"
    assert strip_think("reason only</think>summary") == "reason only"
    assert strip_think("no tags at all") == "no tags at all"
    assert strip_think("<think></think>after") == "after"
    assert strip_think("<think>unclosed reasoning") == "unclosed reasoning"


def test_ingest_s1k_style(tmp_path: Path) -> None:
    src = tmp_path / "s1k.jsonl"
    rows = [
        {
            "question": "What is 2+3?",
            "solution": "We add. $\\boxed{5}$",
            "deepseek_thinking_trajectory": "<think>2+3 is 5, so \\boxed{5}</think>",
        },
        {
            "question": "What is 2*3?",
            "solution": "It is \\boxed{6}.",
            "deepseek_thinking_trajectory": "Multiply: 6.",
        },
        {
            "question": "Empty trace?",
            "solution": "\\boxed{1}",
            "deepseek_thinking_trajectory": "<think>  </think>",
        },
        {"question": "No trace?", "solution": "\\boxed{1}"},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    probs, bad = load_problems(
        ProblemsConfig(source="file", num_problems=0, trace_field="deepseek_thinking_trajectory"),
        src,
    )
    assert [b["reason"] for b in bad] == ["missing_trace"]
    out, quar = ingest_traces(probs, "ingested:deepseek_thinking_trajectory")
    assert [r["cot"] for r in out] == ["2+3 is 5, so \\boxed{5}", "Multiply: 6."]
    assert [r["answer"] for r in out] == ["5", "6"] and [r["num_correct"] for r in out] == [1, 0]
    assert [q["reason"] for q in quar] == ["empty_trace"]
    assert len(out) + len(quar) + len(bad) == len(rows)


def test_prompt_matches_evaluation() -> None:
    from palign_ray.eval.score import build_prompt

    assert teacher_prompt("What is 1+1?") == build_prompt("What is 1+1?")
    assert (
        teacher_prompt("Q")
        == "Please reason step by step, and put your final answer within \\boxed{}.Q"
    )


@pytest.mark.timeout(600)
def test_real_teacher_cli_tiny_model(ray_session, tiny_model: str, tmp_path: Path) -> None:
    """teacher CLI → Ray Data actor pool → vLLM (tiny random model): every problem is output or quarantine."""
    from palign_ray.cli import main

    out = tmp_path / "traces.parquet"
    rc = main(
        [
            "teacher",
            "--output",
            str(out),
            f"teacher.model={tiny_model}",
            "problems.num_problems=4",
            "teacher.num_samples=2",
            "teacher.max_tokens=16",
            "engine.max_num_seqs=32",
            "engine.max_model_len=512",
            "teacher.use_reference_solutions=true",
        ]
    )
    summary = json.loads(
        (tmp_path / "traces.summary.json").read_text()
    )  # stdout also carries Ray/vLLM logs
    traces = pq.read_table(out).to_pylist()
    quar = pq.read_table(tmp_path / "traces.quarantine.parquet").to_pylist()
    ids = {r["problem_id"] for r in builtin_problems(4, 0)}
    assert {r["problem_id"] for r in traces} | {q["problem_id"] for q in quar} == ids
    assert len(traces) + len(quar) == 4 and rc == 0
    assert summary["num_samples_total"] == 8 and summary["generated_tokens"] > 0
    assert all(r["trace_source"] in ("teacher", "reference") for r in traces)
    assert {
        "problem_id",
        "question",
        "answer",
        "cot",
        "num_samples",
        "num_correct",
        "cot_tokens",
        "teacher_model",
    } <= set(traces[0])


def test_run_teacher_routes_ingested_rows_without_generation() -> None:
    from palign_ray.teacher import run_teacher

    rows = [
        {"problem_id": "x", "question": "Q", "answer": "5", "cot": "<think>so \\boxed{5}</think>"}
    ]
    out, quar, summary = run_teacher(rows, Config())
    assert out[0]["trace_source"] == "ingested" and out[0]["cot"] == "so \\boxed{5}" and quar == []
    assert summary["num_in"] == 1 and summary["num_out"] == 1
