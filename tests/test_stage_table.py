"""The stage and method tables carry every per-stage fact; readers ask the rows, never branch on names."""

import dataclasses
import json
import re
from pathlib import Path
from typing import get_args, get_type_hints

import pytest

from palign_ray import pipeline as P
from palign_ray.artifacts import Manifest, StageDir, read_manifest
from palign_ray.checks import plan_problems
from palign_ray.config import ENGINE_SECTIONS, Config, RunConfig, load_config

REPO = Path(__file__).parents[1]
READERS = [
    REPO / "palign_ray" / f for f in ("checks.py", "console.py", "report.py", "summaries.py")
] + sorted((REPO / "palign_ray" / "compare").glob("*.py"))


def test_rows_say_where_readers_open_a_stage() -> None:
    from palign_ray.sft.stage import SHARDS

    assert {s.name: s.output for s in P.STAGES} == {
        "problems": "",
        "teacher": "",
        "truncate": "",
        "align": "",
        "sft_data": SHARDS,
        "train": "model",
        "base_eval": "base",
        "eval": "trained",
    }
    dirs = {"train": Path("/r/methods/x/train"), "teacher": Path("/r/teacher")}
    assert P.stage_output(dirs, "train") == Path("/r/methods/x/train/model")
    assert P.stage_output(dirs, "teacher") == Path("/r/teacher")  # the committed parts
    assert P.stage_dirs("/r", ["eval"]) == {"eval": Path("/r/eval")}


def test_engine_sections_are_the_rows_and_known_to_config() -> None:
    sections = {s.name: s.engine_section for s in P.STAGES if s.engine_section}
    assert sections == {
        "teacher": "teacher",
        "truncate": "judge",
        "align": "align",
        "base_eval": "eval",
        "eval": "eval",
    }
    assert set(sections.values()) <= set(ENGINE_SECTIONS)
    # a stage holding engine pools without an engine section would start engines nobody can size
    assert all(s.hardware for s in P.STAGES if s.engine_section)


def test_methods_table_covers_run_method_and_the_sft_records() -> None:
    from palign_ray.sft.records import METHODS as SFT_METHODS

    names = tuple(m.name for m in P.METHODS)
    assert names == get_args(get_type_hints(RunConfig)["method"]) == SFT_METHODS
    skips = {m.name: set(m.skips) for m in P.METHODS if m.skips}
    assert skips == {"full_cot": {"truncate", "align"}, "prefix_only": {"align"}}
    assert all(set(m.skips) <= set(P.STAGE_NAMES) for m in P.METHODS)
    cfg = P.effective_config(load_config(None, ["run.method=fixed_ratio"]))
    assert cfg.judge.search == "fixed_ratio"
    with pytest.raises(ValueError, match="unknown stage 'judge'"):
        P.stage_row("judge")


def test_a_new_row_shows_up_in_the_plan_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Adding a stage is one row: its check runs when it is planned, and rows sharing a check report once."""

    def check(cfg: Config, check_paths: bool) -> list[str]:
        return ["score.k=0: must be >= 1"]

    extra = (
        P.Stage("score", ("eval",), ("eval",), False, lambda s: {}, check=check),
        P.Stage("rescore", ("score",), ("eval",), False, lambda s: {}, check=check),
    )
    monkeypatch.setattr(P, "STAGES", P.STAGES + extra)
    monkeypatch.setattr(P, "STAGE_NAMES", P.STAGE_NAMES + ("score", "rescore"))
    cfg = load_config(None, [])
    assert plan_problems(cfg, ["score"]) == ["score: score.k=0: must be >= 1"]
    assert plan_problems(cfg, ["score", "rescore"]) == ["score/rescore: score.k=0: must be >= 1"]
    assert plan_problems(cfg, ["eval"]) == []  # not planned: not checked


def test_base_eval_and_eval_share_their_check_and_report_once() -> None:
    cfg = load_config(None, ["eval.num_samples=0"])
    got = plan_problems(cfg, ["base_eval", "eval"])
    assert got and all(line.startswith("base_eval/eval: ") for line in got)
    assert plan_problems(cfg, ["eval"])[0].startswith("eval: ")


def test_readers_do_not_branch_on_stage_names_or_open_literal_stage_paths() -> None:
    """`== "train"`, `in ("base_eval", "eval")`, `run_dir / "eval"`, `/ "trained"`: facts that belong on the rows."""
    names = "|".join(P.STAGE_NAMES)
    paths = "|".join([*P.STAGE_NAMES, *(s.output for s in P.STAGES if s.output)])
    branch = re.compile(rf'(==|!=)\s*"({names})"|\(\s*"({names})"\s*,\s*"({names})"')
    path = re.compile(rf'/\s*"({paths})"')
    for f in READERS:
        text = f.read_text()
        assert not branch.search(text), f"{f.name}: {branch.search(text)}"
        assert not path.search(text), f"{f.name}: {path.search(text)}"


def test_manifest_round_trips_what_the_pipeline_writes(tmp_path: Path) -> None:
    sd = StageDir(tmp_path / "teacher")
    sd.write_part([{"problem_id": "a"}], [{"problem_id": "b", "reason": "no_answer"}])
    sd.write_manifest(
        config_hash="abc",
        wall_s=1.5,
        num_input=2,
        engine_starts=1,
        summaries=[{"generated_tokens": 3}],
    )
    written = json.loads(sd.manifest_path.read_text())
    m = read_manifest(sd.root)
    assert (m.num_output, m.num_quarantined, m.reasons, m.num_parts) == (1, 1, {"no_answer": 1}, 1)
    assert (m.config_hash, m.wall_s, m.num_input, m.summary) == ("abc", 1.5, 2, None)
    assert m.extra == {"engine_starts": 1, "summaries": [{"generated_tokens": 3}]}
    assert m.to_dict() == written
    assert Manifest.from_dict(written) == m


def test_manifest_refuses_a_file_that_is_not_one(tmp_path: Path) -> None:
    p = tmp_path / "manifest.json"
    p.write_text(json.dumps({"num_output": "3", "reasons": {}, "num_parts": 1}))
    with pytest.raises(ValueError, match=r"manifest.json: not a stage manifest .*num_output='3'"):
        read_manifest(p)
    p.write_text(json.dumps({"judge_audit": {}}))  # counts absent: 0, as readers took them before
    assert read_manifest(p) == Manifest(extra={"judge_audit": {}})


def test_console_summary_comes_from_the_row() -> None:
    from palign_ray.console import summary_lines

    head = {"average": {"pass@k": {"1": 0.5}}}
    row = P.stage_row("eval")
    assert not row.counts_rows and row.summary is not None
    line = summary_lines("eval", {"wall_s": 2, "num_input": 9, "trained": head})[0][1]
    assert "in →" not in line and "trained pass@1 0.500" in line
    # a row that counts rows shows them; the same manifest under another row changes the words
    assert "9 in → 0 out" in summary_lines("align", {"wall_s": 2, "num_input": 9})[0][1]
    assert dataclasses.replace(row, summary=None).summary is None  # rows are plain frozen data
