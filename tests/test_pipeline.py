"""Pipeline bookkeeping: method plans, chained config hashes, chunked resume, empty-stage errors."""

import logging

import pytest

from palign_ray import pipeline as P
from palign_ray.artifacts import StageDir
from palign_ray.config import load_config


def _names(cfg):
    return [s.name for s in P.stages_for(P.effective_config(cfg))]


def test_method_plans():
    assert _names(load_config(None)) == ["problems", "teacher", "truncate", "align", "sft_data", "train", "eval"]
    assert _names(load_config(None, ["run.method=full_cot"])) == ["problems", "teacher", "sft_data", "train", "eval"]
    assert _names(load_config(None, ["run.method=prefix_only"])) == ["problems", "teacher", "truncate", "sft_data", "train", "eval"]
    full = P.stages_for(load_config(None, ["run.method=full_cot"]))
    assert next(s for s in full if s.name == "sft_data").input_stage == "teacher"
    assert P.effective_config(load_config(None, ["run.method=fixed_ratio"])).judge.search == "fixed_ratio"


def test_changed_section_invalidates_that_stage_and_later_ones_only():
    a = load_config(None)
    b = load_config(None, ["judge.threshold=0.3"])
    ha, hb = P.stage_hashes(a, P.stages_for(a)), P.stage_hashes(b, P.stages_for(b))
    assert [s for s in ha if ha[s] == hb[s]] == ["problems", "teacher"]
    c = load_config(None, ["run.run_dir=/elsewhere", "run.chunk_size=7"])  # where/how, not what
    assert P.stage_hashes(c, P.stages_for(c)) == ha


def test_stage_engine_placement_does_not_invalidate_but_engine_settings_do():
    a = load_config(None)
    ha = P.stage_hashes(a, P.stages_for(a))
    moved = load_config(None, ["teacher.engine.num_actors=3", "judge.engine.batch_size=4", "eval.engine.num_cpus_per_actor=0.25"])
    assert P.stage_hashes(moved, P.stages_for(moved)) == ha  # where engines run, not what they compute
    longer = load_config(None, ["align.engine.max_model_len=4096"])
    hl = P.stage_hashes(longer, P.stages_for(longer))
    assert [s for s in ha if ha[s] == hl[s]] == ["problems", "teacher", "truncate"]


def _fake_stage(calls):
    def fn(rows, cfg):
        calls.append([r["problem_id"] for r in rows])
        out = [{"problem_id": r["problem_id"], "x": r["x"] * 2} for r in rows if r["x"] % 3]
        quar = [{"stage": "t", "problem_id": r["problem_id"], "reason": "div3", "detail": ""} for r in rows if not r["x"] % 3]
        return out, quar, {"n": len(rows)}
    return fn


def test_row_stage_chunks_resume_and_account(tmp_path):
    cfg = load_config(None, ["run.chunk_size=4"])
    rows = [{"problem_id": f"p{i:02d}", "x": i} for i in range(10)]
    sd = StageDir(tmp_path / "t")
    P._prepare(sd, "h1")
    calls: list = []
    # Simulate a crash after the first chunk: only 4 rows were processed and written.
    out, quar, _ = _fake_stage(calls)(rows[:4], cfg)
    sd.write_part(out, quar)
    P.run_row_stage("t", _fake_stage(calls), rows, cfg, sd, "h1")
    assert calls[1:] == [["p04", "p05", "p06", "p07"], ["p08", "p09"]]  # only the missing ids
    ids = sorted(r["problem_id"] for r in sd.output_rows()) + sorted(q["problem_id"] for q in sd.quarantine_rows())
    assert sorted(ids) == [r["problem_id"] for r in rows]  # each exactly once
    m = sd.manifest_path.read_text()
    assert '"num_output": 6' in m and '"num_quarantined": 4' in m and '"div3": 4' in m


def test_rows_that_vanish_are_quarantined_not_lost(tmp_path):
    cfg = load_config(None)
    sd = StageDir(tmp_path / "t")
    P._prepare(sd, "h")
    P.run_row_stage("t", lambda rows, c: (rows[:1], [], {}), [{"problem_id": "a"}, {"problem_id": "b"}], cfg, sd, "h")
    assert [q["reason"] for q in sd.quarantine_rows()] == ["lost_in_stage"]


def test_empty_stage_stops_with_reasons(tmp_path):
    cfg = load_config(None)
    sd = StageDir(tmp_path / "t")
    P._prepare(sd, "h")
    fn = lambda rows, c: ([], [{"stage": "t", "problem_id": r["problem_id"], "reason": "wrong_answer", "detail": ""} for r in rows], {})  # noqa: E731
    with pytest.raises(P.PipelineError, match=r"stage 't' produced no output rows.*wrong_answer': 2"):
        P.run_row_stage("t", fn, [{"problem_id": "a"}, {"problem_id": "b"}], cfg, sd, "h")
    assert not sd.manifest_path.exists()


def test_prepare_clears_a_stage_left_by_another_config(tmp_path):
    sd = StageDir(tmp_path / "t")
    P._prepare(sd, "old")
    sd.write_part([{"problem_id": "a"}], [])
    P._prepare(sd, "new")
    assert sd.output_rows() == []
    P._prepare(sd, "new")
    sd.write_part([{"problem_id": "b"}], [])
    P._prepare(sd, "new")
    assert [r["problem_id"] for r in sd.output_rows()] == ["b"]


def test_unknown_stage_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown stage"):
        P.run_pipeline(load_config(None, [f"run.run_dir={tmp_path}"]), ["teachr"])


@pytest.mark.timeout(900)
def test_real_pipeline_tiny_model_end_to_end_and_resume(tmp_path, tiny_model, ray_session, caplog):
    """Every stage for real (Ray Data + vLLM, Ray Train + DeepSpeed) on the tiny model; a rerun skips all."""
    import json

    over = [f"run.run_dir={tmp_path / 'run'}", "run.method=prefix_only", "problems.num_problems=4",
            "teacher.num_samples=1", "teacher.max_tokens=8", "teacher.use_reference_solutions=true",
            "sft.max_steps=1", "sft.num_workers=2", "eval.num_problems=2", "eval.num_samples=1", "eval.max_tokens=8",
            "ray.num_cpus=4"] + [f"{s}.model={tiny_model}" for s in ("teacher", "judge", "align", "sft")]
    cfg = load_config(None, over)
    with caplog.at_level(logging.INFO, logger="palign_ray.pipeline"):
        manifests = P.run_pipeline(cfg)
    released = [r.getMessage().split(":")[0] for r in caplog.records if "engines released" in r.getMessage()]
    assert released == ["stage teacher", "stage truncate", "stage eval"]  # each engine stage handed its CPUs back
    assert list(manifests) == ["problems", "teacher", "truncate", "sft_data", "train", "eval"]
    for name in ("problems", "teacher", "truncate"):
        assert manifests[name]["num_output"] + manifests[name]["num_quarantined"] == 4
    assert manifests["sft_data"]["num_output"] > 0
    run = tmp_path / "run"
    assert (run / "train" / "model" / "model.safetensors").is_file()
    assert (run / "eval" / "trained" / "metrics.json").is_file() and (run / "eval" / "base" / "metrics.json").is_file()
    report = (run / "report.md").read_text()
    assert "Rows per stage" in report and "Cost per accepted SFT example" in report and "(trained)" in report
    before = {p: p.stat().st_mtime_ns for p in run.rglob("manifest.json")}
    again = P.run_pipeline(cfg)
    assert {p: p.stat().st_mtime_ns for p in run.rglob("manifest.json")} == before  # nothing recomputed
    assert json.dumps(again, sort_keys=True) == json.dumps(manifests, sort_keys=True)
