"""One CLI, one set of rules (issue 19.4): every subcommand exits 2 on a bad config key; row stages
write output + `<stem>.quarantine.parquet` + `<stem>.summary.json` and exit 3 when no row came out.

Everything here runs without a model: the no-rows inputs are quarantined before any engine starts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from palign_ray.cli import (
    COMMANDS,
    EXIT_BAD_INPUT,
    EXIT_NO_ROWS,
    EXIT_ROWS,
    existing_outputs,
    main,
)

# the fewest arguments each subcommand needs to get as far as loading its config
MINIMAL_ARGS: dict[str, list[str]] = {
    "generate": ["--input", "x.jsonl", "--output", "o.jsonl"],
    "run": [],
    "compare": [],
    "config": [],
    "teacher": ["--output", "o.parquet"],
    "align": ["--input", "x.jsonl", "--output", "o.parquet"],
    "sft-data": ["--input", "x.jsonl", "--output", "o"],
    "build-sft": ["--input", "x.jsonl", "--output", "o"],
    "truncate": ["--input", "x.jsonl", "--output", "o.parquet"],
    "grade": ["x.jsonl"],
    "eval": ["--output", "o"],
    "split": ["x.txt"],
    "train": ["--data", "d", "--output", "o"],
}


def _jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _quarantine_reasons(path: Path) -> list[str]:
    return [q["reason"] for q in pq.read_table(path).to_pylist()]


def test_every_command_is_covered() -> None:
    assert set(MINIMAL_ARGS) == set(COMMANDS)
    assert all(target.startswith("palign_ray.cli.") for target, _ in COMMANDS.values())


@pytest.mark.parametrize("command", sorted(MINIMAL_ARGS))
def test_bad_config_key_exits_2(command: str, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:  # argparse's error(): usage + message on stderr, exit 2
        main([command, *MINIMAL_ARGS[command], "nosuch.key=1"])
    assert e.value.code == EXIT_BAD_INPUT
    assert "nosuch" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["teacher", "align", "truncate", "generate", "grade"])
def test_missing_input_file_exits_2(command: str, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    args = [a if a != "x.jsonl" else str(tmp_path / "missing.jsonl") for a in MINIMAL_ARGS[command]]
    if command == "teacher":
        args += ["--input", str(tmp_path / "missing.jsonl")]
    assert main([command, *args]) == EXIT_BAD_INPUT
    assert f"palign {command}: error:" in capsys.readouterr().err


def test_unknown_command_exits_2(capsys) -> None:
    assert main(["nosuch"]) == EXIT_BAD_INPUT
    assert main(["--help"]) == 0 and "exit codes:" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("command", "rows", "extra", "reasons"),
    [
        ("teacher", [{"answer": "1"}, {"answer": "2"}], [], {"missing_question"}),
        ("align", ["not json", "{"], [], {"invalid_json"}),
        ("truncate", [{"question": "q", "cot": ["a", "b"]}], [], {"cot_is_list"}),
        ("generate", [{"text": "no prompt field"}], [], {"missing_prompt"}),
        ("sft-data", ["not json"], ["--method", "full_cot"], {"invalid_json"}),
        ("build-sft", ["not json"], ["--method", "full_cot"], {"invalid_json"}),
    ],
)
def test_row_stage_with_no_usable_rows_exits_3(
    command: str, rows: list[object], extra: list[str], reasons: set[str], tmp_path: Path, capsys
) -> None:
    """All rows quarantined → exit 3; the output, the quarantine (with reasons) and the summary exist."""
    src = _jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / ("out" if command in ("sft-data", "build-sft") else "out.parquet")
    rc = main([command, "--input", str(src), "--output", str(out), *extra])
    assert rc == EXIT_NO_ROWS
    assert out.exists()
    assert set(_quarantine_reasons(tmp_path / "out.quarantine.parquet")) >= reasons
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert summary  # each stage's own accounting (teacher counts problem rejects apart)
    if command != "generate":  # generate's stdout is a preview of the generations
        assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(summary, default=str))


def test_input_may_be_the_positional_file(tmp_path: Path) -> None:
    src = _jsonl(tmp_path / "in.jsonl", ["not json"])
    out = tmp_path / "out.parquet"
    assert main(["align", str(src), "--output", str(out)]) == EXIT_NO_ROWS
    assert _quarantine_reasons(tmp_path / "out.quarantine.parquet") == ["invalid_json"]
    with pytest.raises(SystemExit) as e:  # FILE and a different --input
        main(["align", str(src), "--input", str(tmp_path / "b.jsonl"), "--output", str(out)])
    assert e.value.code == EXIT_BAD_INPUT
    with pytest.raises(SystemExit) as e:  # neither
        main(["align", "--output", str(out)])
    assert e.value.code == EXIT_BAD_INPUT


def _generations(tmp_path: Path) -> Path:
    return _jsonl(
        tmp_path / "gens.jsonl",
        [
            {"prompt_ori": "1+1?", "answer": "2", "output": ["so \\boxed{2}", "\\boxed{3}"]},
            {"prompt_ori": "2+2?", "answer": "4", "output": "\\boxed{4}"},
            {"prompt_ori": "no gold", "output": "\\boxed{4}"},
        ],
    )


def test_grade_rows_out_exits_0_with_uniform_files(tmp_path: Path, capsys) -> None:
    labels = tmp_path / "labels.jsonl"
    rc = main(["grade", "run.seed=1", str(_generations(tmp_path)), "--labels-out", str(labels)])
    assert rc == EXIT_ROWS
    assert len(labels.read_text().splitlines()) == 3
    assert len(_quarantine_reasons(tmp_path / "labels.quarantine.parquet")) == 1
    summary = json.loads((tmp_path / "labels.summary.json").read_text())
    assert json.loads(capsys.readouterr().out)["input"] == summary["input"]


def test_grade_with_no_gradable_rows_exits_3(tmp_path: Path) -> None:
    src = _jsonl(tmp_path / "gens.jsonl", [{"prompt_ori": "q", "output": "\\boxed{1}"}])
    labels = tmp_path / "labels.jsonl"
    assert main(["grade", str(src), "--labels-out", str(labels)]) == EXIT_NO_ROWS
    assert labels.read_text() == ""
    assert _quarantine_reasons(tmp_path / "labels.quarantine.parquet")


def test_unreadable_paths_and_deep_json_exit_cleanly(tmp_path: Path, capsys) -> None:
    """Issue 27: a directory named like a file and a JSON line nested 100,000 deep ended in tracebacks."""
    folder = tmp_path / "gens.jsonl"
    folder.mkdir()
    assert main(["grade", str(folder)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "Is a directory" in err and "Traceback" not in err
    deep = tmp_path / "deep.jsonl"
    deep.write_text(
        json.dumps({"prompt_ori": "q", "output": ["\\boxed{1}"], "answer": "1"})
        + "\n"
        + "[" * 100_000
        + "\n"
    )
    labels = tmp_path / "labels.jsonl"
    assert main(["grade", str(deep), "--labels-out", str(labels)]) == EXIT_ROWS
    assert "Traceback" not in capsys.readouterr().err
    assert _quarantine_reasons(tmp_path / "labels.quarantine.parquet") == ["invalid_json"]


@pytest.mark.parametrize(
    "argv",
    [
        ["grade", "{d}/data.jsonl", "--labels-out", "{d}/data.jsonl"],
        ["truncate", "--input", "{d}/data.jsonl", "--output", "{d}/data.jsonl"],
        ["align", "--input", "{d}/o.quarantine.parquet", "--output", "{d}/o.parquet"],
        ["sft-data", "--input", "{d}", "--output", "{d}"],
        ["sft-data", "--input", "{d}/data.jsonl", "--output", "{d}"],
        ["generate", "--input", "{d}/data.jsonl", "--output", "{d}/data.jsonl/x.jsonl"],
        ["train", "--data", "{d}", "--output", "{d}/model"],
    ],
)
def test_an_output_that_would_destroy_an_input_is_refused_before_any_work(
    tmp_path: Path, argv: list[str], capsys
) -> None:
    """Issue 27: `sft-data --input D --output D` deleted D's parts; `grade f --labels-out f` overwrote f."""
    data = _generations(tmp_path)
    (tmp_path / "data.jsonl").write_bytes(data.read_bytes())
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit) as e:
        main([a.format(d=tmp_path) for a in argv])
    assert e.value.code == EXIT_BAD_INPUT
    assert "would overwrite or delete the input" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_grade_needs_exactly_one_file(tmp_path: Path) -> None:
    for argv in (["grade"], ["grade", "a.jsonl", "b.jsonl"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == EXIT_BAD_INPUT


def test_overrides_may_sit_anywhere(tmp_path: Path, capsys) -> None:
    """`key=value` before, between or after options, for every command (one parser rule)."""
    assert main(["config", "judge.threshold=0.3", "--platform", "cpu", "run.seed=7"]) == 0
    out = capsys.readouterr().out
    assert "threshold: 0.3" in out and "seed: 7" in out
    text = tmp_path / "t.txt"
    text.write_text("One. Two.")
    assert main(["split", "judge.segmentation=paper", str(text), "--max-chars", "100"]) == 0
    assert [json.loads(line)["text"] for line in capsys.readouterr().out.splitlines()] == [
        "One. ",
        "Two.",
    ]


def test_stage_modules_have_no_main_blocks() -> None:
    root = Path(__file__).resolve().parents[1] / "palign_ray"
    offenders = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if p.name != "__main__.py" and 'if __name__ == "__main__"' in p.read_text()
    ]
    assert offenders == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["teacher", "--output", "o.parquet", "teacher.num_samples=0"], "teacher.num_samples=0"),
        (
            ["teacher", "--output", "o.txt"],
            "--output o.txt: use a .parquet or .jsonl or .json file",
        ),
        (["generate", "--input", "{src}", "--output", "o.csv"], "--output o.csv: use a .parquet"),
        (
            ["align", "--input", "{src}", "--output", "o.parquet", "align.model=./nomodel"],
            "no such model",
        ),
        (["truncate", "--input", "{src}", "--output", "o.jsonl"], "use a .parquet file"),
        (["eval", "--model", "{pickled}", "--output", "o"], "--model="),
        (["eval", "--output", "o", "eval.max_tokens=0"], "eval.max_tokens=0"),
        (["sft-data", "--input", "{src}", "--output", "o", "sft.model=/nowhere"], "sft.model="),
        (["train", "--data", "d", "--output", "o", "sft.learning_rate=0"], "sft.learning_rate=0"),
    ],
)
def test_standalone_commands_check_everything_before_any_work(
    argv: list[str], message: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    """Issue 27.3: `eval --model <pickle-only dir>` started Ray and died in a 69-line actor traceback;
    `teacher.num_samples=0` reached the engine; a bad output suffix failed after all generation."""
    import palign_ray.ray_env as ray_env

    def no_ray(*a, **k):
        raise AssertionError("Ray started before the checks")

    monkeypatch.setattr(ray_env, "init_ray", no_ray)
    monkeypatch.chdir(tmp_path)
    src = _jsonl(tmp_path / "in.jsonl", [{"problem_id": "a", "question": "q", "prompt": "p"}])
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"\x80")
    argv = [a.format(src=src, pickled=pickled) for a in argv]
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == EXIT_BAD_INPUT and "nothing was run" in err and message in err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "pickled"]  # nothing written


def test_an_existing_output_is_replaced_only_with_overwrite(tmp_path: Path, capsys) -> None:
    """Issue 27.2: a rerun silently replaced an earlier output (and its quarantine and summary)."""
    gens = _generations(tmp_path)
    labels = tmp_path / "labels.jsonl"
    assert main(["grade", str(gens), "--labels-out", str(labels)]) == EXIT_ROWS
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(SystemExit) as e:
        main(["grade", str(gens), "--labels-out", str(labels), "run.seed=7"])
    err = capsys.readouterr().err
    assert e.value.code == EXIT_BAD_INPUT and "pass --overwrite" in err and str(labels) in err
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing touched
    summary = tmp_path / "labels.summary.json"
    labels.unlink()  # a leftover sibling alone is an earlier output too
    with pytest.raises(SystemExit):
        main(["grade", str(gens), "--labels-out", str(labels)])
    assert summary.read_bytes() == before[summary]
    assert main(["grade", str(gens), "--labels-out", str(labels), "--overwrite"]) == EXIT_ROWS
    assert labels.is_file()
    empty = tmp_path / "empty_dir"
    empty.mkdir()  # an empty directory holds nothing to lose
    assert existing_outputs([empty]) == [] and existing_outputs([labels]) != []
