"""Issue 27.5: bad input of many kinds through every command that reads files, as a user would give it.

For each kind: the exit code (3 = every row quarantined, 2 = refused with one line naming the file or
value), no traceback, rows in = rows out + rows quarantined (each with its reason), and the input file
byte-identical afterwards. Every row here is bad, so no engine starts (align's actor pool does).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from palign_ray.cli import main


def _jsonl(*rows: Any) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


Q = {"question": "What is 1+1?", "answer": "2"}
ROW_CASES: list[tuple[str, str, str | bytes, list[str], list[str]]] = [
    # (id, command, input, extra args, reasons of the quarantined rows, in input order)
    (
        "truncate-invalid-json",
        "truncate",
        _jsonl("{not json", '{"question": 1'),
        [],
        ["invalid_json"] * 2,
    ),
    ("truncate-not-an-object", "truncate", _jsonl("[1, 2]", '"text"'), [], ["not_an_object"] * 2),
    (
        "truncate-no-question",
        "truncate",
        _jsonl({"cot": "A. B.", "answer": "1"}),
        [],
        ["missing_question"],
    ),
    (
        "truncate-empty-question",
        "truncate",
        _jsonl({"question": "", "cot": "A. B."}),
        [],
        ["missing_question"],
    ),
    (
        "truncate-nan-question",
        "truncate",
        '{"question": NaN, "cot": "A."}\n',
        [],
        ["missing_question"],
    ),
    ("truncate-no-cot", "truncate", _jsonl(Q), [], ["missing_cot"]),
    ("truncate-empty-cot", "truncate", _jsonl({**Q, "cot": ""}), [], ["missing_cot"]),
    ("truncate-cot-number", "truncate", _jsonl({**Q, "cot": 12345}), [], ["wrong_type"]),
    ("truncate-cot-list", "truncate", _jsonl({**Q, "cot": ["a", "b"]}), [], ["cot_is_list"]),
    (
        "truncate-cot-broken-list",
        "truncate",
        _jsonl({**Q, "cot": "['unterminated"}),
        [],
        ["cot_is_serialised_list"],
    ),
    (
        "truncate-gold-object",
        "truncate",
        _jsonl({**Q, "cot": "A. B.", "answer": {"v": "27"}}),
        [],
        ["wrong_type"],
    ),
    ("truncate-deeply-nested", "truncate", "[" * 5000 + "]" * 5000 + "\n", [], ["invalid_json"]),
    (
        "truncate-invalid-utf8",
        "truncate",
        b'{"question": "\xff\xfe", "cot": "A."}\n',
        [],
        ["invalid_utf8"],
    ),
    ("generate-no-prompt", "generate", _jsonl({"text": "x"}), [], ["missing_prompt"]),
    ("generate-prompt-number", "generate", _jsonl({"prompt": 5}), [], ["wrong_type"]),
    ("generate-blank-prompt", "generate", _jsonl({"prompt": "   "}), [], ["missing_prompt"]),
    ("generate-invalid-json", "generate", _jsonl("{"), [], ["invalid_json"]),
    (
        "grade-no-output",
        "grade",
        _jsonl({"prompt_ori": "q", "answer": "1"}),
        [],
        ["missing_output"],
    ),
    (
        "grade-output-object",
        "grade",
        _jsonl({"prompt_ori": "q", "answer": "1", "output": {"a": 1}}),
        [],
        ["wrong_type"],
    ),
    (
        "grade-no-gold",
        "grade",
        _jsonl({"prompt_ori": "q", "output": "\\boxed{1}"}),
        [],
        ["missing_answer"],
    ),
    ("grade-invalid-json", "grade", _jsonl("nope"), [], ["invalid_json"]),
    (
        "align-prefix-number",
        "align",
        _jsonl({"problem_id": "a", **Q, "prefix": 7}),
        [],
        ["wrong_type"],
    ),
    ("align-invalid-json", "align", _jsonl("{"), [], ["invalid_json"]),
    ("teacher-no-question", "teacher", _jsonl({"answer": "1"}), [], ["missing_question"]),
    (
        "teacher-empty-question",
        "teacher",
        _jsonl({"question": "", "answer": "1"}),
        [],
        ["missing_question"],
    ),
    (
        "teacher-question-list",
        "teacher",
        _jsonl({"question": ["a", "b"], "answer": "1"}),
        [],
        ["wrong_type"],
    ),
    ("teacher-no-answer", "teacher", _jsonl({"question": "q"}), [], ["missing_answer"]),
    ("teacher-invalid-json", "teacher", _jsonl("{"), [], ["invalid_json"]),
    (
        "sft-data-no-cot",
        "sft-data",
        _jsonl({"problem_id": "a", **Q}),
        ["--method", "full_cot"],
        ["missing_cot"],
    ),
    ("sft-data-invalid-json", "sft-data", _jsonl("{"), ["--method", "full_cot"], ["invalid_json"]),
    (
        "sft-data-alpaca-number",
        "sft-data",
        _jsonl({"instruction": 7, "output": "x"}),
        ["--format", "alpaca"],
        ["wrong_type"],
    ),
    (
        "sft-data-alpaca-no-output",
        "sft-data",
        _jsonl({"instruction": "q"}),
        ["--format", "alpaca"],
        ["missing_field"],
    ),
    (
        "sft-data-sharegpt-text",
        "sft-data",
        _jsonl({"conversations": "hi"}),
        ["--format", "sharegpt"],
        ["missing_field"],
    ),
    (
        "sft-data-messages-roles",
        "sft-data",
        _jsonl(
            {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]}
        ),
        ["--format", "messages"],
        ["bad_roles"],
    ),
    (
        "sft-data-messages-two-turns",
        "sft-data",
        _jsonl({"messages": [{"role": r, "content": "x"} for r in ("user", "assistant") * 2]}),
        ["--format", "messages"],
        ["not_single_turn"],
    ),
]

# Issue 27.1: the same field readings in every command (tests/test_ingest_one_path.py has the matrix).
ROW_CASES += [
    (
        "truncate-question-number",
        "truncate",
        _jsonl({"question": 7, "cot": "A."}),
        [],
        ["wrong_type"],
    ),
    (
        "truncate-gold-dict",
        "truncate",
        _jsonl({**Q, "cot": "A.", "answer": {"v": "27"}}),
        [],
        ["wrong_type"],
    ),
    (
        "truncate-id-object",
        "truncate",
        _jsonl({**Q, "id": {"a": 1}, "cot": "A."}),
        ["--id-field", "id"],
        ["wrong_type"],
    ),
    ("generate-prompt-list", "generate", _jsonl({"prompt": ["a", "b"]}), [], ["wrong_type"]),
    ("generate-nan-prompt", "generate", '{"prompt": NaN}\n', [], ["missing_prompt"]),
    (
        "grade-question-number",
        "grade",
        _jsonl({"prompt_ori": 5, "answer": "1", "output": "x"}),
        [],
        ["wrong_type"],
    ),
    (
        "grade-null-sample",
        "grade",
        _jsonl({"prompt_ori": "q", "answer": "1", "output": ["a", None]}),
        [],
        ["missing_output"],
    ),
    (
        "align-gold-dict",
        "align",
        _jsonl({"problem_id": "a", "question": "q", "answer": {"v": 1}, "prefix": "A."}),
        [],
        ["wrong_type"],
    ),
    (
        "align-nan-question",
        "align",
        '{"problem_id": "a", "question": NaN, "answer": "1", "prefix": "A."}\n',
        [],
        ["missing_question"],
    ),
    (
        "sft-data-cot-number",
        "sft-data",
        _jsonl({"problem_id": "a", **Q, "cot": 7}),
        ["--method", "full_cot"],
        ["wrong_type"],
    ),
    (
        "sft-data-continuation-list",
        "sft-data",
        _jsonl({"problem_id": "a", "question": "q", "prefix": "A.", "continuation": ["x", "y"]}),
        ["--method", "palign"],
        ["wrong_type"],
    ),
]

OUTPUT = {
    "teacher": "o.parquet",
    "truncate": "o.parquet",
    "align": "o.parquet",
    "generate": "o.jsonl",
}


def _argv(command: str, src: Path, out: Path, extra: list[str]) -> list[str]:
    if command == "grade":
        return ["grade", str(src), "--labels-out", str(out), *extra]
    return [command, "--input", str(src), "--output", str(out), *extra]


def _run(argv: list[str], capsys) -> tuple[int, str]:
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's refusals
        rc = int(e.code or 0)
    err = capsys.readouterr().err
    return rc, err


def _rows(path: Path) -> int:
    if path.is_dir():
        return sum(pq.read_metadata(p).num_rows for p in path.glob("part-*.parquet"))
    if path.suffix == ".parquet":
        return pq.read_metadata(path).num_rows
    return len([line for line in path.read_text().splitlines() if line.strip()])


@pytest.mark.parametrize(
    ("command", "content", "extra", "reasons"),
    [c[1:] for c in ROW_CASES],
    ids=[c[0] for c in ROW_CASES],
)
def test_every_bad_row_is_quarantined_with_its_reason(
    command: str,
    content: str | bytes,
    extra: list[str],
    reasons: list[str],
    tmp_path: Path,
    capsys,
    ray_session,
) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = src.read_bytes()
    out = tmp_path / ("labels.jsonl" if command == "grade" else OUTPUT.get(command, "shards"))
    rc, err = _run(_argv(command, src, out, extra), capsys)
    assert rc == 3 and "Traceback" not in err, err[-2000:]
    quar = pq.read_table(tmp_path / f"{out.stem}.quarantine.parquet").to_pylist()
    assert [q["reason"] for q in quar] == reasons and all(q["detail"] for q in quar)
    rows_in = len([line for line in before.splitlines() if line.strip()])
    assert rows_in == _rows(out) + len(quar)  # nothing lost
    assert src.read_bytes() == before


FILE_CASES: list[tuple[str, list[str], str]] = [
    # (id, argv with {d} for the case's directory, what the one error line says)
    (
        "empty-file",
        ["truncate", "--input", "{d}/empty.jsonl", "--output", "{d}/o.parquet"],
        "is empty",
    ),
    ("missing-file", ["grade", "{d}/missing.jsonl"], "does not exist"),
    (
        "directory-named-like-a-file",
        ["truncate", "--input", "{d}/dir.jsonl", "--output", "{d}/o.parquet"],
        "Is a directory",
    ),
    (
        "corrupt-parquet",
        ["truncate", "--input", "{d}/bad.parquet", "--output", "{d}/o.parquet"],
        "magic bytes",
    ),
    (
        "csv-input",
        ["truncate", "--input", "{d}/data.csv", "--output", "{d}/o.parquet"],
        "unsupported format",
    ),
    ("binary-text-to-split", ["split", "{d}/bin.txt"], "not UTF-8 text"),
    ("metrics-not-json", ["eval", "--compare", "{d}/empty.jsonl", "{d}/data.csv"], "not JSON"),
    (
        "metrics-wrong-shape",
        ["eval", "--compare", "{d}/list.json", "{d}/list.json"],
        "not the metrics.json",
    ),
    (
        "shards-dir-without-shards",
        ["train", "--data", "{d}/dir.jsonl", "--output", "{d}/model"],
        "no part-*.parquet",
    ),
    (
        "output-is-the-input",
        ["grade", "{d}/good.jsonl", "--labels-out", "{d}/good.jsonl"],
        "would overwrite or delete the input",
    ),
    (
        "output-exists",
        ["grade", "{d}/good.jsonl", "--labels-out", "{d}/list.json"],
        "pass --overwrite",
    ),
    (
        "unknown-output-suffix",
        ["generate", "--input", "{d}/good.jsonl", "--output", "{d}/o.csv"],
        "use a .parquet",
    ),
    (
        "bad-setting",
        ["teacher", "--output", "{d}/o.parquet", "teacher.num_samples=0"],
        "teacher.num_samples=0",
    ),
    (
        "bad-number",
        [
            "truncate",
            "--input",
            "{d}/good.jsonl",
            "--output",
            "{d}/o.parquet",
            "judge.threshold=lots",
        ],
        "judge.threshold",
    ),
]


@pytest.mark.parametrize(
    ("argv", "says"), [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES]
)
def test_a_bad_file_or_setting_is_refused_in_one_line(
    argv: list[str], says: str, tmp_path: Path, capsys
) -> None:
    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "dir.jsonl").mkdir()
    (tmp_path / "bad.parquet").write_bytes(b"PAR1garbage")
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00binary")
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "good.jsonl").write_text(
        _jsonl({"prompt_ori": "q", "answer": "1", "output": "\\boxed{1}"})
    )
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    rc, err = _run([a.format(d=tmp_path) for a in argv], capsys)
    assert rc == 2 and says in err and "Traceback" not in err, err[-2000:]
    assert {
        p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()
    } == before  # nothing written


def test_the_corpus_has_at_least_forty_kinds() -> None:
    assert len(ROW_CASES) + len(FILE_CASES) >= 40
