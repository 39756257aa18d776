"""Continuation prompt (verbatim), the Eq. 9 filter (pure) and a real continuation run on Ray Data + vLLM."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from palign_ray.align import (
    check_prefix_rows,
    continuation_prompt,
    filter_all,
    filter_continuations,
    run_align,
)
from palign_ray.builtin import builtin_problems
from palign_ray.config import AlignConfig, Config
from palign_ray.records import MissingColumnsError

# Copied from PAPER.md (the authors' code), braces of the f-string filled in by hand.
PAPER_PROMPT = (
    "Please continue from the draft and solve the problem step by step, and put your final answer within \\boxed{}. "
    "I will provide you with some prior knowledge as a draft to assist you in solving the question.*Question*:"
    "What is {x}?\n*Prefix*:First, $\\frac{1}{2}$."
)


def test_continuation_prompt_is_the_papers() -> None:
    assert continuation_prompt("What is {x}?", "First, $\\frac{1}{2}$.") == PAPER_PROMPT
    assert "question.*Question*:" in PAPER_PROMPT  # the missing space is kept on purpose


def _row(pid: str = "p1", answer: str = "12") -> dict:
    return {
        "problem_id": pid,
        "question": "Q?",
        "answer": answer,
        "prefix": "We start.",
        "prefix_sentences": 1,
    }


def _gen(pid: str, texts: list[str], error: str = "") -> dict:
    return {
        "problem_id": pid,
        "generations": texts,
        "num_generated_tokens": [len(t) for t in texts],
        "finish_reasons": ["stop"] * len(texts),
        "error": error,
    }


def test_filter_keeps_only_matching_answers() -> None:
    acc, rej = filter_continuations(
        _row(),
        _gen("p1", ["so \\boxed{12}", "so \\boxed{13}", "no box", "\\boxed{12.0} done"]),
        10.0,
    )
    assert [a["sample_index"] for a in acc] == [0, 3]
    assert (
        acc[0]["continuation"] == "so \\boxed{12}"
        and acc[0]["prefix"] == "We start."
        and acc[0]["prefix_sentences"] == 1
    )
    assert [(r["sample_index"], r["reason"]) for r in rej] == [
        (1, "wrong_answer"),
        (2, "no_boxed_answer"),
    ]
    assert all(r["stage"] == "align" and r["problem_id"] == "p1" for r in rej)


def test_rejected_continuations_keep_full_text() -> None:
    """Every Eq. 9 rejection is re-derivable: whole text, tokens, finish reason and extracted answer."""
    long_wrong = "x" * 500 + " so \\boxed{13}"
    gen = {
        **_gen("p1", [long_wrong, "no box at all", "\\boxed{12}"]),
        "num_generated_tokens": [321, 7, 5],
        "finish_reasons": ["stop", "length", "stop"],
    }
    _, rej = filter_continuations(_row(), gen, 10.0)
    assert [(r["sample_index"], r["reason"]) for r in rej] == [
        (0, "wrong_answer"),
        (1, "no_boxed_answer"),
    ]
    wrong, unboxed = rej
    assert wrong["continuation"] == long_wrong and len(wrong["detail"]) < len(long_wrong)
    assert wrong["detail"].startswith("extracted='13' gold='12' finish=stop: ")
    assert (wrong["continuation_tokens"], wrong["finish_reason"], wrong["extracted"]) == (
        321,
        "stop",
        "13",
    )
    assert (unboxed["continuation"], unboxed["continuation_tokens"]) == ("no box at all", 7)
    assert (unboxed["finish_reason"], unboxed["extracted"]) == ("length", None)


def test_quarantine_parts_keep_columns_of_any_row(tmp_path: Path) -> None:
    """Rows without the continuation columns (missing_prefix) before rows with them: nothing dropped."""
    from palign_ray.artifacts import StageDir
    from palign_ray.cli import finish

    text = "long " * 100 + "\\boxed{7}"
    _, bad = check_prefix_rows([_row("a"), {**_row("b"), "prefix": ""}])
    _, rej = filter_continuations(_row("a"), _gen("a", [text]), 10.0)
    sd = StageDir(tmp_path / "align")
    sd.write_part([], bad + rej)
    sd.write_part([], bad)  # a part with no rejected continuation at all
    only_bad, mixed = sorted((pq.read_table(f).to_pylist() for f in sd.quarantine_files()), key=len)
    assert [q["reason"] for q in only_bad] == ["missing_prefix"]
    assert [(q["reason"], q["continuation"]) for q in mixed] == [
        ("missing_prefix", None),
        ("wrong_answer", text),
    ]
    assert mixed[1]["continuation_tokens"] == len(text) and mixed[1]["extracted"] == "7"
    # palign align writes the same rows beside its output
    finish(tmp_path / "aligned.parquet", {}, 0, rows=[], quarantined=bad + rej, stdout=False)
    quar = pq.read_table(tmp_path / "aligned.quarantine.parquet").to_pylist()
    assert [q["finish_reason"] for q in quar] == [None, "stop"]
    assert quar[1]["continuation"] == rej[0]["continuation"]


def test_filter_generation_errors() -> None:
    _, rej = filter_continuations(
        _row(), _gen("p1", [], "prompt_too_long: 4000 tokens >= engine.max_model_len 2048"), 10.0
    )
    assert [r["reason"] for r in rej] == ["prompt_too_long"]
    _, rej = filter_continuations(_row(), None, 10.0)
    assert [r["reason"] for r in rej] == ["generation_failed"]


def test_filter_all_joins_on_id_not_order() -> None:
    rows = [_row("a", "1"), _row("b", "2"), _row("c", "3")]
    gens = [_gen("c", ["\\boxed{3}"]), _gen("a", ["\\boxed{2}"]), _gen("b", ["\\boxed{2}"])]
    out, quar = filter_all(rows, gens, AlignConfig())
    assert [o["problem_id"] for o in out] == ["b", "c"]
    assert [(q["problem_id"], q["reason"]) for q in quar] == [("a", "wrong_answer")]


def test_check_prefix_rows() -> None:
    rows = [_row("a"), _row("a"), {**_row("b"), "prefix": "  "}, {**_row("c"), "question": None}]
    ok, bad = check_prefix_rows(rows)
    assert [r["problem_id"] for r in ok] == ["a"]
    assert [b["reason"] for b in bad] == [
        "duplicate_problem_id",
        "missing_prefix",
        "missing_question",
    ]


def test_missing_columns_named() -> None:
    with pytest.raises(MissingColumnsError, match="prefix"):
        run_align([{"problem_id": "a", "question": "q", "answer": "1"}], Config())


@pytest.mark.timeout(600)
def test_real_continuation_cli_tiny_model(ray_session, tiny_model: str, tmp_path: Path) -> None:
    """align CLI → Ray Data actor pool → vLLM continuation (tiny model) → filter; in = out + quarantined."""
    from palign_ray.cli import main

    probs = builtin_problems(3, 0)
    rows = [
        {
            **{k: p[k] for k in ("problem_id", "question", "answer")},
            "prefix": p["solution"][: p["decisive_char_end"]],
        }
        for p in probs
    ]
    src = tmp_path / "prefixes.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "aligned.parquet"
    main(
        [
            "align",
            "--input",
            str(src),
            "--output",
            str(out),
            f"align.model={tiny_model}",
            "align.max_tokens=16",
            "align.num_samples=2",
            "engine.max_num_seqs=32",
            "engine.max_model_len=512",
        ]
    )
    summary = json.loads(
        (tmp_path / "aligned.summary.json").read_text()
    )  # stdout also carries Ray/vLLM logs
    kept = pq.read_table(out).to_pylist()
    quar = pq.read_table(tmp_path / "aligned.quarantine.parquet").to_pylist()
    assert summary["num_continuations"] == 6 and summary["generated_tokens"] > 0
    assert len(kept) + len(quar) == 6  # every continuation is accepted or quarantined with a reason
    assert {q["reason"] for q in quar} <= {
        "wrong_answer",
        "no_boxed_answer",
        "grader_timeout",
        "grader_error",
    }
    assert all(  # rejected continuations are kept whole
        isinstance(q["continuation"], str) and q["continuation_tokens"] > 0 for q in quar
    )
    assert {r["problem_id"] for r in kept} | {q["problem_id"] for q in quar} == {
        p["problem_id"] for p in probs
    }
