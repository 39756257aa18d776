"""Bad-input corpus: every kind is processed, quarantined with a reason code, or refused naming field/file/line.

Each test with rows checks the accounting invariant: rows in = rows out + rows quarantined.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from palign_ray import records as R
from palign_ray.artifacts import read_rows
from palign_ray.config import (
    Config,
    ConfigError,
    EngineConfig,
    JudgeConfig,
    ProblemsConfig,
    config_from_dict,
    load_config,
)
from palign_ray.engines.fake import FakeEngine
from palign_ray.judge.probes import judge_tools
from palign_ray.judge.rounds import judge_rows
from palign_ray.judge.stage import truncate_rows
from palign_ray.problems import load_problems


def reasons(quarantined: list[dict]) -> dict[str, str]:
    return {str(q[R.PROBLEM_ID]): q[R.REASON] for q in quarantined}


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def fixed_ratio_cfg(**judge: object) -> Config:
    return config_from_dict({"judge": {"search": "fixed_ratio", "fixed_ratio": 0.5, **judge}})


# --------------------------------------------------------------------------- problems stage (file → rows)


def test_problem_file_corpus_each_row_out_or_quarantined_with_reason(tmp_path: Path) -> None:
    """Missing question/answer, wrong types, None/NaN answers, duplicate ids: each gets its own reason."""
    lines = [
        json.dumps({"id": "ok1", "question": "What is 1+1?", "answer": "2"}),
        json.dumps({"id": "noq", "answer": "3"}),  # missing question
        json.dumps(
            {"id": "blankq", "question": "   \n\t", "answer": "3"}
        ),  # whitespace-only question
        json.dumps({"id": "listq", "question": ["What", "is"], "answer": "3"}),  # wrong type (list)
        json.dumps({"id": "intq", "question": 12345, "answer": "3"}),  # wrong type (int)
        json.dumps({"id": "noa", "question": "What is 2+2?"}),  # missing answer
        json.dumps({"id": "nonea", "question": "What is 3+3?", "answer": None}),  # None answer
        '{"id": "nana", "question": "What is 4+4?", "answer": NaN}',  # NaN literal (json.loads accepts it)
        json.dumps(
            {"id": "lista", "question": "What is 5+5?", "answer": [10]}
        ),  # wrong type answer
        json.dumps(
            {"id": "ok1", "question": "Another question with the same id?", "answer": "9"}
        ),  # duplicate id
        json.dumps(
            {"id": "ok2", "question": "What is 6+6?", "answer": 12.0}
        ),  # float answer → "12"
    ]
    path = tmp_path / "problems.jsonl"
    path.write_text("\n".join(lines) + "\n")
    rows, quar = load_problems(ProblemsConfig(source="file"), path)
    assert len(rows) + len(quar) == len(lines)
    assert [r[R.PROBLEM_ID] for r in rows] == ["ok1", "ok2"]
    assert rows[1][R.ANSWER] == "12"
    assert reasons(quar) == {
        "noq": "missing_question",
        "blankq": "missing_question",
        "listq": "wrong_type",
        "intq": "wrong_type",
        "noa": "missing_answer",
        "nonea": "missing_answer",
        "nana": "missing_answer",
        "lista": "wrong_type",
        "ok1": "duplicate_problem_id",
    }
    # the detail names the file and the line
    by_id = {q[R.PROBLEM_ID]: q for q in quar}
    assert f"{path}:2" in by_id["noq"][R.DETAIL]
    assert f"{path}:10" in by_id["ok1"][R.DETAIL]
    assert "list" in by_id["listq"][R.DETAIL]


def test_invalid_utf8_and_non_json_lines_are_quarantined_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(
        json.dumps({"id": "a", "question": "Q one?", "answer": "1"}).encode()
        + b"\n"
        + b'{"id": "b", "question": "caf\xe9 \xff\xfe?", "answer": "2"}\n'  # latin-1 bytes: not UTF-8
        + b"this is not json at all\n"
        + b'{"id": "c", "question": "truncated...\n'  # a line cut mid-object
        + b'["a", "list", "not", "an", "object"]\n'
        + b"\n"  # blank lines are skipped, not rows
        + json.dumps({"id": "d", "question": "Q two?", "answer": "4"}).encode()
        + b"\n"
    )
    rows, quar = load_problems(ProblemsConfig(source="file"), path)
    assert len(rows) + len(quar) == 6  # 6 non-blank lines
    assert [r[R.PROBLEM_ID] for r in rows] == ["a", "d"]
    got = {q[R.PROBLEM_ID]: (q[R.REASON], q[R.DETAIL]) for q in quar}
    assert got["line-2"][0] == "invalid_utf8" and f"{path}:2" in got["line-2"][1]
    assert got["line-3"][0] == "invalid_json" and f"{path}:3" in got["line-3"][1]
    assert got["line-4"][0] == "invalid_json" and f"{path}:4" in got["line-4"][1]
    assert got["line-5"][0] == "not_an_object" and "list" in got["line-5"][1]


def test_empty_input_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.jsonl is empty"):
        read_rows(empty)
    with pytest.raises(ValueError, match=r"empty\.jsonl is empty"):
        load_problems(ProblemsConfig(source="file"), empty)


def test_missing_input_file_is_refused_naming_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.jsonl does not exist"):
        load_problems(ProblemsConfig(source="file"), tmp_path / "nope.jsonl")


def test_blank_lines_only_file_gives_no_rows_and_no_crash(tmp_path: Path) -> None:
    path = tmp_path / "blank.jsonl"
    path.write_text("\n  \n\n")
    rows, quar = read_rows(path)
    assert rows == [] and quar == []


def test_a_directory_input_reads_data_files_not_side_files(tmp_path: Path) -> None:
    """Issue 27: a directory given as input also read the *.quarantine.parquet lying beside the data."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.Table.from_pylist([{"problem_id": "a"}, {"problem_id": "b"}]), tmp_path / "x.parquet"
    )
    pq.write_table(pa.Table.from_pylist([{"problem_id": "bad"}]), tmp_path / "x.quarantine.parquet")
    rows, _ = read_rows(tmp_path)
    assert [r["problem_id"] for r in rows] == ["a", "b"]


# --------------------------------------------------------------------------- truncate stage (model-free)


def test_truncate_corpus_cot_edge_cases_fixed_ratio() -> None:
    """Missing/empty/whitespace/wrong-type CoT quarantined; no-boundary and 200k-char CoTs processed."""
    huge = ("We add the numbers and carry the digit. " * 5000)[:200_000]
    rows = [
        {
            R.PROBLEM_ID: "good",
            R.QUESTION: "Q?",
            R.COT: "First we add. Then we check. So the answer is 2.",
            R.ANSWER: "2",
        },
        {R.PROBLEM_ID: "nocot", R.QUESTION: "Q?", R.ANSWER: "2"},
        {R.PROBLEM_ID: "emptycot", R.QUESTION: "Q?", R.COT: "", R.ANSWER: "2"},
        {R.PROBLEM_ID: "wscot", R.QUESTION: "Q?", R.COT: " \n\t  \n", R.ANSWER: "2"},
        {R.PROBLEM_ID: "listcot", R.QUESTION: "Q?", R.COT: ["a.", "b."], R.ANSWER: "2"},
        {R.PROBLEM_ID: "intcot", R.QUESTION: "Q?", R.COT: 42, R.ANSWER: "2"},
        {R.PROBLEM_ID: "noq", R.COT: "We add. Done.", R.ANSWER: "2"},
        {
            R.PROBLEM_ID: "noboundary",
            R.QUESTION: "Q?",
            R.COT: "we add the numbers and get two " * 3,
            R.ANSWER: "2",
        },
        {R.PROBLEM_ID: "huge", R.QUESTION: "Q?", R.COT: huge, R.ANSWER: "2"},
        {R.PROBLEM_ID: "nanans", R.QUESTION: "Q?", R.COT: "We add. Done.", R.ANSWER: math.nan},
        {R.PROBLEM_ID: "good", R.QUESTION: "dup?", R.COT: "We add. Done.", R.ANSWER: "2"},
    ]
    t0 = time.perf_counter()
    out, quar, summary = truncate_rows(rows, fixed_ratio_cfg())
    assert time.perf_counter() - t0 < 60  # a 200k-char trace must not make segmentation quadratic
    assert len(out) + len(quar) == len(rows)
    assert summary["num_input"] == len(rows) and summary["num_output"] + summary[
        "num_quarantined"
    ] == len(rows)
    assert reasons(quar) == {
        "nocot": "empty_cot",
        "emptycot": "empty_cot",
        "wscot": "empty_cot",
        "listcot": "empty_cot",
        "intcot": "empty_cot",
        "noq": "empty_question",
        "good": "duplicate_problem_id",
    }
    by_id = {r[R.PROBLEM_ID]: r for r in out}
    assert set(by_id) == {"good", "noboundary", "huge", "nanans"}
    nb = by_id["noboundary"]
    assert nb["num_sentences"] >= 1 and nb[R.PREFIX] and rows[7][R.COT].startswith(nb[R.PREFIX])
    h = by_id["huge"]
    assert (
        h["num_sentences"] > 100
        and 0 < len(h[R.PREFIX]) < len(huge)
        and huge.startswith(h[R.PREFIX])
    )


def test_truncate_cli_corpus_accounts_for_every_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`palign truncate` end to end without a model (judge.search=fixed_ratio): in = out + quarantined."""
    import pyarrow.parquet as pq

    from palign_ray.cli import main

    src = tmp_path / "traces.jsonl"
    good = {
        "id": "g1",
        "question": "What is 2+2?",
        "cot": "Two plus two. That is four. Done.",
        "answer": "4",
    }
    src.write_bytes(
        b"".join(
            json.dumps(r).encode() + b"\n"
            for r in [
                good,
                {
                    "id": "g2",
                    "question": "What is 3+3?",
                    "cot": "Three and three make six.",
                    "answer": None,
                },
                {"id": "e1", "question": "Q?", "cot": "   ", "answer": "1"},
                {"id": "e2", "question": "Q?", "answer": "1"},
                {"id": "l1", "question": "Q?", "cot": ["A.", "B."], "answer": "1"},
                {"id": "i1", "question": "Q?", "cot": 7, "answer": "1"},
                {"id": "g1", "question": "dup", "cot": "A. B.", "answer": "1"},
            ]
        )
        + b"not json\n"
        + b'{"id": "u1", "cot": "\xff"}\n'
    )
    out_path = tmp_path / "out" / "prefixes.parquet"
    rc = main(
        [
            "truncate",
            "--input",
            str(src),
            "--output",
            str(out_path),
            "--id-field",
            "id",
            "judge.search=fixed_ratio",
        ]
    )
    assert rc == 0
    out = pq.read_table(out_path).to_pylist()
    quar = pq.read_table(out_path.with_name("prefixes.quarantine.parquet")).to_pylist()
    assert len(out) + len(quar) == 9
    assert sorted(r[R.PROBLEM_ID] for r in out) == ["g1", "g2"]
    assert reasons(quar) == {
        "e1": "missing_cot",
        "e2": "missing_cot",
        "l1": "cot_is_list",
        "i1": "wrong_type",
        "g1": "duplicate_problem_id",
        "line-8": "invalid_json",
        "line-9": "invalid_utf8",
    }
    summary = json.loads(out_path.with_name("prefixes.summary.json").read_text())
    assert summary["num_quarantined_total"] == 7 and summary["num_output"] == 2
    assert not list(out_path.parent.glob(".tmp-*"))


def test_truncate_cli_empty_input_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from palign_ray.cli import main

    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    rc = main(
        [
            "truncate",
            "--input",
            str(empty),
            "--output",
            str(tmp_path / "o.parquet"),
            "judge.search=fixed_ratio",
        ]
    )
    assert rc == 2
    assert "empty.jsonl is empty" in capsys.readouterr().err
    assert not (tmp_path / "o.parquet").exists()


def test_teacher_cli_with_bad_problems_file_accounts_for_every_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`palign teacher --input` ingesting traces (problems.trace_field, no model): bad lines quarantined, not lost."""
    import pyarrow.parquet as pq

    from palign_ray.cli import main

    src = tmp_path / "problems.jsonl"
    good = [
        {
            "id": f"p{i}",
            "question": f"What is {i} + {i}?",
            "answer": str(2 * i),
            "cot": f"We add {i} and {i}. That gives {2 * i}. The final answer is \\boxed{{{2 * i}}}.",
        }
        for i in range(3)
    ]
    bad = [
        {"id": "noa", "question": "What?", "cot": "A."},
        {"id": "p0", "question": "dup", "answer": "1", "cot": "B."},
        {"answer": "5", "cot": "C."},
        {"id": "nocot", "question": "Q?", "answer": "1"},
        {"id": "wscot", "question": "Q?", "answer": "1", "cot": "  \n "},
    ]
    src.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in good + bad) + b"{broken\n")
    out_path = tmp_path / "traces.parquet"
    rc = main(
        ["teacher", "--input", str(src), "--output", str(out_path), "problems.trace_field=cot"]
    )
    err = capsys.readouterr()
    assert rc == 0, err.err[-2000:]
    out = pq.read_table(out_path).to_pylist()
    quar = pq.read_table(tmp_path / "traces.quarantine.parquet").to_pylist()
    assert len(out) + len(quar) == len(good) + len(bad) + 1
    assert sorted(r[R.PROBLEM_ID] for r in out) == ["p0", "p1", "p2"]
    got = reasons(quar)
    assert (
        got["noa"] == "missing_answer"
        and got["p0"] == "duplicate_problem_id"
        and got["line-9"] == "invalid_json"
    )
    assert got["nocot"] == "missing_trace" and got["wscot"] == "missing_trace"
    assert any(v == "missing_question" for v in got.values())


# --------------------------------------------------------------------------- judge logic on a scripted engine


def _judge_rows(tokenizer, respond, rows, **jkw):
    jcfg = JudgeConfig(**jkw)
    builder, vt = judge_tools(tokenizer, jcfg)
    engine = FakeEngine(respond, tokenizer)
    out, quar, calls = judge_rows(
        engine, builder, vt, rows, jcfg, EngineConfig(max_model_len=2048), "fake", seed=0
    )
    return out, quar, calls


def _trace_rows(n: int) -> list[dict]:
    return [
        {
            R.PROBLEM_ID: f"p{i}",
            R.QUESTION: f"What is {i} + 1?",
            R.COT: " ".join(f"Step {j}: we look at {i} and {j}." for j in range(1, 7)),
            R.ANSWER: str(i + 1),
        }
        for i in range(n)
    ]


def test_judge_returning_garbage_text_follows_the_unparseable_policy(tokenizer) -> None:
    rows = _trace_rows(4)
    out, quar, calls = _judge_rows(
        tokenizer,
        lambda ids, sp, i: ("\x00%%% lorem ipsum ]]>", None),
        rows,
        verdict="generate",
        search="binary",
        max_new_tokens=16,
    )
    assert len(out) + len(quar) == len(rows) and not quar
    for r in out:
        assert r["num_probes"] >= 1 and r["num_unparseable"] == r["num_probes"]
        assert (
            r["is_sufficient"] is False
        )  # garbage counts as NOT_ENOUGH (the paper's policy) → whole CoT kept
        assert r["prefix_sentences"] == r["num_sentences"]
        assert r["probe_trace"][0]["raw"].startswith("\x00%%%")
    assert calls >= 1


def test_judge_returning_no_logprobs_is_counted_as_error_not_crash(tokenizer) -> None:
    rows = _trace_rows(3)
    out, quar, _ = _judge_rows(
        tokenizer, lambda ids, sp, i: ("garbage", None), rows, verdict="logprob", search="binary"
    )
    assert len(out) + len(quar) == len(rows)
    assert all(r["num_judge_errors"] == r["num_probes"] >= 1 for r in out)
    assert {p["error"] for r in out for p in r["probe_trace"]} == {"no_verdict_logprobs"}


def test_judge_engine_raising_keeps_every_row(tokenizer) -> None:
    def boom(ids, sp, i):
        raise RuntimeError("engine died")

    rows = _trace_rows(3)
    out, quar, _ = _judge_rows(tokenizer, boom, rows, verdict="logprob", search="binary")
    assert (
        len(out) + len(quar) == len(rows) and not out
    )  # never guessed verdicts: retryable quarantine
    assert {q[R.REASON] for q in quar} == {"judge_engine_error"} and all(
        "engine died" in q[R.DETAIL] for q in quar
    )


def test_prompt_longer_than_max_model_len_is_quarantined(tokenizer) -> None:
    long_question = (
        "How many apples are there if "
        + " and ".join(f"box {i} holds {i} apples" for i in range(300))
        + "?"
    )
    rows = [
        {R.PROBLEM_ID: "long", R.QUESTION: long_question, R.COT: "We add. Done.", R.ANSWER: "1"}
    ] + _trace_rows(2)
    jcfg = JudgeConfig(verdict="logprob", search="binary")
    builder, vt = judge_tools(tokenizer, jcfg)
    engine = FakeEngine(
        lambda ids, sp, i: ("x", {vt.enough_id: -0.1, vt.not_enough_id: -2.0}), tokenizer
    )
    out, quar, _ = judge_rows(
        engine, builder, vt, rows, jcfg, EngineConfig(max_model_len=512), "fake", seed=0
    )
    assert len(out) + len(quar) == len(rows)
    assert reasons(quar) == {"long": "prompt_too_long"}
    assert "engine.max_model_len 512" in quar[0][R.DETAIL]
    assert sorted(r[R.PROBLEM_ID] for r in out) == ["p0", "p1"]


def test_huge_cot_is_cut_to_the_token_budget_with_a_flag(tokenizer) -> None:
    cot = " ".join(f"Step {j}: we add {j} to the total." for j in range(4000))  # ~130k chars
    rows = [{R.PROBLEM_ID: "huge", R.QUESTION: "Q?", R.COT: cot, R.ANSWER: "1"}]
    t0 = time.perf_counter()
    out, quar, _ = _judge_rows(
        tokenizer,
        lambda ids, sp, i: ("<answer>[NOT_ENOUGH]</answer>", None),
        rows,
        verdict="generate",
        search="binary",
        max_new_tokens=16,
        max_cot_tokens=512,
    )
    assert time.perf_counter() - t0 < 60
    assert len(out) + len(quar) == 1 and not quar
    r = out[0]
    assert r["cot_truncated"] is True and r["num_judged_sentences"] < r["num_sentences"] == 4000


# --------------------------------------------------------------------------- grader, model path, config


def test_grader_input_that_hangs_math_verify_times_out() -> None:
    from palign_ray.grading import grade

    t0 = time.perf_counter()
    g = grade(r"The answer is \boxed{8^{8^{8^{8^{8}}}}}", "3", timeout_s=1.0)
    wall = time.perf_counter() - t0
    assert g.reason == "grader_timeout" and g.correct is False
    assert wall < 15  # 1 s budget plus killing and respawning the child, under load


def test_missing_model_path_is_refused_naming_it(tmp_path: Path) -> None:
    from palign_ray.models import resolve_model

    with pytest.raises(FileNotFoundError, match="no-such-model.*does not exist"):
        resolve_model(str(tmp_path / "no-such-model"))
    with pytest.raises(ValueError, match="model name is empty"):
        resolve_model("")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_config_unknown_key_or_wrong_type_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError, match=r"judge\.bogus_key"):
        load_config(None, ["judge.bogus_key=1"])
    with pytest.raises(ConfigError, match=r"judge\.threshold: expected float, got str"):
        load_config(None, ["judge.threshold=high"])
    with pytest.raises(ConfigError, match=r"run\.chunk_size: expected int, got list"):
        load_config(None, ["run.chunk_size=[1,2]"])
    yml = tmp_path / "c.yaml"
    yml.write_text("judge:\n  thresold: 0.3\n")
    with pytest.raises(ConfigError, match=r"judge\.thresold"):
        load_config(str(yml), [])

    from palign_ray.cli import main

    with pytest.raises(SystemExit) as exc:
        main(
            ["truncate", "--input", "x.jsonl", "--output", "y.parquet", "engine.max_model_len=lots"]
        )
    assert exc.value.code == 2
    assert "engine.max_model_len" in capsys.readouterr().err
