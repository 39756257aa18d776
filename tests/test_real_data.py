"""Real data as people have it (issue 18): s1K v1.0 rows, R1-distill outputs, read from the shared data folder.

The files live in $PALIGN_DATA_DIR/external/ (see its PROVENANCE.md) and are read in place, never
copied into the repo; without the folder these tests skip (the `shared_data` fixture says why).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from palign_ray.config import ProblemsConfig
from palign_ray.problems import content_id, load_problems, load_summary
from palign_ray.teacher import ingest_traces

S1K = "s1k_v1_sepo_test50.jsonl"
# name → (file, rows, rows the source repository scored correct)
R1 = {
    "aime24": ("r1_distill_qwen7b_aime24_outputs.jsonl", 30, 18),
    "amc23": ("r1_distill_qwen7b_amc23_outputs.jsonl", 40, 38),
}
# Runs a `palign` command in a fresh interpreter and reports its own peak RSS: Linux's VmHWM, which exec
# resets (ru_maxrss can carry the forking test process's size across exec); ru_maxrss elsewhere (bytes on macOS).
MEASURED = (
    "import json, re, resource, sys\n"
    "from palign_ray.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "try:\n"
    "    kb = int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
    "except OSError:\n"
    "    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // (1024 if sys.platform == 'darwin' else 1)\n"
    "sys.stderr.write('\\nMEASURED ' + json.dumps({'rc': rc, 'max_rss_kb': kb}))\n"
)


@pytest.fixture(scope="module")
def external(shared_data: str) -> Path:
    path = Path(shared_data) / "external"
    assert (path / "PROVENANCE.md").is_file(), (
        f"{path}: the external samples of issue 18 are missing from the shared data"
    )
    return path


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _s1k(**kw: object) -> ProblemsConfig:
    return ProblemsConfig(
        source="file",
        num_problems=0,
        trace_field="thinking_trajectories",
        answer_field="solution",
        **kw,
    )


def test_s1k_math_rows_ingest_with_real_newlines(external: Path) -> None:
    """The issue's command with the filter: 21 math rows, each trace the decoded list element (real newlines,
    no "['" wrapper), the other 29 rows quarantined as filtered_out with their cot_type."""
    raw = _jsonl(external / S1K)
    decoded = {
        content_id(r["question"]): ast.literal_eval(r["thinking_trajectories"])[0] for r in raw
    }
    rows, bad = load_problems(_s1k(filter="cot_type=math"), external / S1K)
    assert len(rows) == 21 and len(bad) == 29
    for r in rows:
        assert r["cot"] == decoded[r["problem_id"]] and r["trace_format"] == "serialised_list"
        assert "\n" in r["cot"] and not r["cot"].lstrip().startswith("[")
    assert load_summary(rows, bad)["by_group"] == {
        "crossword": {"filtered_out": 8},
        "math": {"ingested": 21},
        "science": {"filtered_out": 21},
    }
    golds = {r["answer"] for r in rows}
    assert {
        "173",
        "82",
        "\\frac{507}{595}",
        "ABD",
    } <= golds  # bare AIME / boxed Numina / boxed MATH / JEE answers
    out, quar = ingest_traces(rows, "ingested:thinking_trajectories")
    assert len(out) == 21 and quar == []
    assert all(o["cot"] == decoded[o["problem_id"]].strip() for o in out)


def test_s1k_every_group_gets_a_gold_or_a_reason(external: Path) -> None:
    """Without a filter: science rows get their final "Answer: X" line, crossword rows (answer line first,
    explanation after) are gold_not_extractable at load, not one by one in align."""
    rows, bad = load_problems(_s1k(), external / S1K)
    assert load_summary(rows, bad)["by_group"] == {
        "crossword": {"gold_not_extractable": 8},
        "math": {"ingested": 21},
        "science": {"ingested": 21},
    }
    science = [r for r in rows if r["group"] == "science"]
    assert (
        sum(r["answer"] in ("A", "B", "C", "D") for r in science) == 18
    )  # the GPQA rows; JEE/SciEval give ABC, 10.02, CO
    assert all(len(r["answer"]) < 60 for r in rows)  # no paragraph became a gold answer


def test_s1k_as_the_hf_dataset_stores_it(external: Path, tmp_path: Path) -> None:
    """`thinking_trajectories` as a list of strings (its type in the HF dataset) was quarantined as
    missing_trace on every row; now element problems.trace_index is the trace."""
    raw = _jsonl(external / S1K)
    as_list = (
        tmp_path / "s1k_list.jsonl"
    )  # derived in tmp from the shared file, not a copy in the repo
    as_list.write_text(
        "".join(
            json.dumps({**r, "thinking_trajectories": ast.literal_eval(r["thinking_trajectories"])})
            + "\n"
            for r in raw
        )
    )
    listed, bad = load_problems(_s1k(filter="cot_type=math"), as_list)
    from_repr, _ = load_problems(_s1k(filter="cot_type=math"), external / S1K)
    assert [r["cot"] for r in listed] == [r["cot"] for r in from_repr] and len(listed) == 21
    assert {r["trace_format"] for r in listed} == {"list"} and {b["reason"] for b in bad} == {
        "filtered_out"
    }


@pytest.mark.parametrize("name", sorted(R1))
def test_r1_distill_outputs_ingest_with_think_split(external: Path, name: str) -> None:
    """R1-distill traces (`code`: a list of one; `</think>` without `<think>`): the CoT is the reasoning
    before `</think>`, the answer part is kept in after_think; AMC's float golds (27.0) become "27"."""
    file, num_rows, num_scored = R1[name]
    raw = {str(r["idx"]): r for r in _jsonl(external / file)}
    rows, bad = load_problems(
        ProblemsConfig(source="file", num_problems=0, trace_field="code", id_field="idx"),
        external / file,
    )
    assert len(rows) == num_rows and bad == []
    assert load_summary(rows, bad)["think_split"] == {"close_only": num_rows}
    for r in rows:
        head, after = raw[r["problem_id"]]["code"][0].split("</think>", 1)
        assert (
            r["cot"] == head.strip()
            and r["after_think"] == after.strip()
            and "\\boxed" in r["after_think"]
        )
        assert r["answer"] == raw[r["problem_id"]]["gt"].lstrip("0")
    out, quar = ingest_traces(rows, "ingested:code")
    assert quar == [] and all("</think>" not in o["cot"] for o in out)
    # The reasoning alone grades as the source repository scored the whole output, row by row.
    assert [o["num_correct"] for o in out] == [int(raw[o["problem_id"]]["score"][0]) for o in out]
    assert sum(o["num_correct"] for o in out) == num_scored


def _measured(args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, float, int]:
    """(process, wall seconds, peak RSS in MiB) of `palign ARGS` in a fresh interpreter."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", MEASURED, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    wall_s = time.perf_counter() - start
    line = proc.stderr.rsplit("MEASURED ", 1)
    assert len(line) == 2, proc.stderr[-2000:]
    stats = json.loads(line[1])
    assert stats["rc"] == 0, proc.stderr[-2000:]
    return proc, wall_s, stats["max_rss_kb"] // 1024


def test_split_and_truncate_the_longest_r1_trace(
    external: Path, tmp_path: Path, record_property
) -> None:
    """`palign split` and `palign truncate` (judge.search=fixed_ratio: no model) on the ~95k-character trace,
    in bounded time and memory (measured on 2 busy cores, interpreter start included: split 0.3-0.5 s and
    21-91 MiB peak RSS, truncate 1.5-2.6 s and 123-127 MiB; 1,240 sentences)."""
    file = external / R1["aime24"][0]
    longest = max(_jsonl(file), key=lambda r: len(r["code"][0]))
    assert len(longest["code"][0]) > 90_000
    src = tmp_path / "longest.jsonl"
    src.write_text(json.dumps(longest) + "\n")
    rows, _ = load_problems(ProblemsConfig(source="file", num_problems=0, trace_field="code"), src)
    (trace,), _ = ingest_traces(rows, "ingested:code")
    (tmp_path / "cot.txt").write_text(trace["cot"])

    proc, split_s, split_mib = _measured(["split", "cot.txt"], tmp_path)
    spans = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(spans) > 1000 and all(
        s["text"] == trace["cot"][s["start"] : s["end"]] for s in spans
    )
    assert trace["cot"][spans[-1]["end"] :].strip() == ""  # nothing after the last sentence is lost

    (tmp_path / "trace.jsonl").write_text(json.dumps(trace) + "\n")
    _, trunc_s, trunc_mib = _measured(
        ["truncate", "--input", "trace.jsonl", "--output", "p.parquet", "judge.search=fixed_ratio"],
        tmp_path,
    )
    (kept,) = pq.read_table(tmp_path / "p.parquet").to_pylist()
    assert trace["cot"].startswith(kept["prefix"]) and 0 < len(kept["prefix"]) < len(trace["cot"])
    summary = json.loads((tmp_path / "p.summary.json").read_text())
    assert summary["num_output"] == 1 and summary["num_sentences"]["p50"] == len(spans)

    for key, value in {
        "split_s": split_s,
        "split_mib": split_mib,
        "truncate_s": trunc_s,
        "truncate_mib": trunc_mib,
    }.items():
        record_property(key, round(value, 2))
    # Bounds with room for a loaded machine; a quadratic step or a copy per sentence would break them.
    assert split_s < 60 and split_mib < 512, (split_s, split_mib)
    assert trunc_s < 120 and trunc_mib < 1024, (trunc_s, trunc_mib)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_teacher_cli_on_s1k_as_the_issue_ran_it(
    external: Path, tmp_path: Path, ray_session
) -> None:
    """`palign teacher --input s1k.jsonl problems.trace_field=thinking_trajectories problems.answer_field=solution
    problems.num_problems=0 problems.filter=cot_type=math`: 21 traces out, 29 rows quarantined with a reason."""
    from palign_ray.cli import main

    out = tmp_path / "t.parquet"
    rc = main(
        [
            "teacher",
            "--input",
            str(external / S1K),
            "--output",
            str(out),
            "problems.trace_field=thinking_trajectories",
            "problems.answer_field=solution",
            "problems.num_problems=0",
            "problems.filter=cot_type=math",
        ]
    )
    traces = pq.read_table(out).to_pylist()
    quar = pq.read_table(tmp_path / "t.quarantine.parquet").to_pylist()
    assert rc == 0 and len(traces) == 21 and len(quar) == 29
    assert {q["reason"] for q in quar} == {"filtered_out"} and {r["group"] for r in traces} == {
        "math"
    }
    assert all(
        r["trace_source"] == "ingested" and "\n" in r["cot"] and not r["cot"].startswith("[")
        for r in traces
    )
    assert {r["trace_format"] for r in traces} == {"serialised_list"}
