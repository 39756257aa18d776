"""Pipeline bookkeeping: method plans, chained config hashes, chunked resume, empty-stage errors."""

import logging

import pytest

from palign_ray import pipeline as P
from palign_ray.artifacts import StageDir
from palign_ray.config import load_config


def _names(cfg):
    return [s.name for s in P.stages_for(P.effective_config(cfg))]


def test_method_plans():
    assert _names(load_config(None)) == [
        "problems",
        "teacher",
        "truncate",
        "align",
        "sft_data",
        "train",
        "base_eval",
        "eval",
    ]
    assert _names(load_config(None, ["run.method=full_cot"])) == [
        "problems",
        "teacher",
        "sft_data",
        "train",
        "base_eval",
        "eval",
    ]
    assert _names(load_config(None, ["run.method=prefix_only"])) == [
        "problems",
        "teacher",
        "truncate",
        "sft_data",
        "train",
        "base_eval",
        "eval",
    ]
    full = P.stages_for(load_config(None, ["run.method=full_cot"]))
    assert next(s for s in full if s.name == "sft_data").inputs == ("teacher",)
    assert (
        P.effective_config(load_config(None, ["run.method=fixed_ratio"])).judge.search
        == "fixed_ratio"
    )


def test_changed_section_invalidates_that_stage_and_later_ones_only():
    a = load_config(None)
    b = load_config(None, ["judge.threshold=0.3"])
    ha, hb = P.stage_hashes(a, P.stages_for(a)), P.stage_hashes(b, P.stages_for(b))
    # the base student does not depend on the judge
    assert [s for s in ha if ha[s] == hb[s]] == ["problems", "teacher", "base_eval"]
    c = load_config(None, ["run.run_dir=/elsewhere", "run.chunk_size=7"])  # where/how, not what
    assert P.stage_hashes(c, P.stages_for(c)) == ha


def test_an_edited_problems_file_invalidates_the_problems_stage(tmp_path):
    """Issue 27: an edited problems.path file was skipped on rerun ("manifest present")."""
    src = tmp_path / "problems.jsonl"
    src.write_text('{"question": "1+1?", "answer": "2"}\n')
    a = load_config(None, ["problems.source=file", f"problems.path={src}"])
    ha = P.stage_hashes(a, P.stages_for(a))
    assert P.stage_hashes(a, P.stages_for(a)) == ha  # the same file, the same hashes
    src.write_text('{"question": "1+1?", "answer": "3"}\n')
    hb = P.stage_hashes(a, P.stages_for(a))
    assert all(ha[s] != hb[s] for s in ha if s != "base_eval")  # the base student reads no problems
    builtin = load_config(None, ["problems.decontaminate=false"])
    assert P._input_digest(builtin) == ""  # nothing read but the config


def test_the_benchmarks_screened_against_are_part_of_the_problems_hash(tmp_path):
    """Issue 26.3: an added benchmark or an edited benchmark file screens the problems again."""
    bench = tmp_path / "mine.jsonl"
    bench.write_text('{"problem": "What is 2+2?", "answer": "4"}\n')

    def problems_hash(*over: str) -> str:
        cfg = load_config(None, list(over))
        return P.stage_hashes(cfg, P.stages_for(cfg))["problems"]

    plain = problems_hash()
    added = problems_hash(f"eval.benchmarks=[builtin,{bench}]")
    assert added != plain
    bench.write_text('{"problem": "What is 2+3?", "answer": "5"}\n')
    assert problems_hash(f"eval.benchmarks=[builtin,{bench}]") != added
    off = problems_hash("problems.decontaminate=false")
    assert problems_hash("problems.decontaminate=false", f"eval.benchmarks=[{bench}]") == off


def test_the_audits_align_settings_invalidate_truncate_but_align_only_settings_do_not():
    """The judge audit continues with align's sampling and grader: a stale audit must not be reused."""
    a = load_config(None)
    ha = P.stage_hashes(a, P.stages_for(a))
    for over, truncate_changes in (
        ("align.temperature=0.9", True),
        ("align.grader=paper", True),
        ("align.num_samples=3", False),
        ("judge.on_invalid=fail", False),
    ):
        b = load_config(None, [over])
        hb = P.stage_hashes(b, P.stages_for(b))
        assert (ha["truncate"] != hb["truncate"]) == truncate_changes, over


def test_stage_engine_placement_does_not_invalidate_but_engine_settings_do():
    a = load_config(None)
    ha = P.stage_hashes(a, P.stages_for(a))
    moved = load_config(
        None,
        [
            "teacher.engine.num_actors=3",
            "judge.engine.batch_size=4",
            "eval.engine.num_cpus_per_actor=0.25",
        ],
    )
    assert (
        P.stage_hashes(moved, P.stages_for(moved)) == ha
    )  # where engines run, not what they compute
    longer = load_config(None, ["align.engine.max_model_len=4096"])
    hl = P.stage_hashes(longer, P.stages_for(longer))
    assert [s for s in ha if ha[s] == hl[s]] == ["problems", "teacher", "truncate", "base_eval"]


def test_method_is_hashed_only_into_the_stages_it_changes():
    """Issue 15.10: run.method sat in the root of the hash chain, so switching method recomputed problems and teacher."""
    base = load_config(None)
    hb = P.stage_hashes(base, P.stages_for(base))
    for method in ("full_cot", "prefix_only", "fixed_ratio"):
        cfg = P.effective_config(load_config(None, [f"run.method={method}"]))
        h = P.stage_hashes(cfg, P.stages_for(cfg))
        assert h["problems"] == hb["problems"] and h["teacher"] == hb["teacher"], method
        assert h["base_eval"] == hb["base_eval"], method  # one base evaluation for every method
        assert h["sft_data"] != hb["sft_data"], method
    prefix = P.effective_config(load_config(None, ["run.method=prefix_only"]))
    assert (
        P.stage_hashes(prefix, P.stages_for(prefix))["truncate"] == hb["truncate"]
    )  # same judge, same cuts


def test_sft_model_change_invalidates_the_shards():
    """Issue 15.2: sft_data is tokenized with sft.model's tokenizer but did not hash it, so a new student trained
    on the old tokenizer's ids."""
    a, b = load_config(None), load_config(None, ["sft.model=/models/other"])
    ha, hb = P.stage_hashes(a, P.stages_for(a)), P.stage_hashes(b, P.stages_for(b))
    assert ha["align"] == hb["align"] and ha["sft_data"] != hb["sft_data"]
    assert ha["base_eval"] != hb["base_eval"]  # another base student


def test_training_refuses_shards_made_for_another_model(tmp_path):
    from palign_ray.artifacts import write_json
    from palign_ray.sft.data import META_FILE

    write_json(tmp_path / META_FILE, {"model": "default"})
    P.check_shards_model(tmp_path, "default")
    with pytest.raises(P.PipelineError, match="tokenized for 'default'.*rerun stage sft_data"):
        P.check_shards_model(tmp_path, "/models/other")


def _done(sd, h, rows):
    P._prepare(sd, h)
    sd.write_part(rows, [])
    sd.write_manifest(config_hash=h)


def test_stage_refuses_input_made_under_another_config(tmp_path):
    """Issue 15.1: `--stages align judge.threshold=0.3` built align from the 0.5 cuts and stamped it current."""
    old = load_config(None, [f"run.run_dir={tmp_path}", "judge.threshold=0.5"])
    new = load_config(None, [f"run.run_dir={tmp_path}", "judge.threshold=0.3"])
    h_old = P.stage_hashes(old, P.stages_for(old))
    for name in ("problems", "teacher", "truncate"):
        _done(StageDir(tmp_path / name), h_old[name], [{"problem_id": "a"}])
    with pytest.raises(
        P.PipelineError,
        match=r"'align' needs the output of 'truncate', which was made under another config",
    ):
        P.run_pipeline(new, ["align"])
    assert not (tmp_path / "align" / "manifest.json").exists()
    with pytest.raises(
        P.PipelineError, match=r"'train' needs the output of 'sft_data', which has not finished"
    ):
        P.run_pipeline(new, ["train"])


def test_empty_stage_stops_with_reasons(tmp_path):
    sd = StageDir(tmp_path / "t")
    P._prepare(sd, "h")
    sd.write_part(
        [], [{"stage": "t", "problem_id": r, "reason": "wrong_answer", "detail": ""} for r in "ab"]
    )
    with pytest.raises(
        P.PipelineError, match=r"stage 't' produced no output rows.*wrong_answer': 2"
    ):
        P._check_not_empty("t", sd)


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

    over = [
        f"run.run_dir={tmp_path / 'run'}",
        "run.method=prefix_only",
        "problems.num_problems=4",
        "teacher.num_samples=1",
        "teacher.max_tokens=8",
        "teacher.use_reference_solutions=true",
        "sft.max_steps=1",
        "sft.num_workers=2",
        "eval.num_problems=2",
        "eval.num_samples=1",
        "eval.max_tokens=8",
        "ray.num_cpus=4",
        "judge.audit_problems=3",
        "judge.audit_samples=1",
        "align.max_tokens=8",
    ] + [f"{s}.model={tiny_model}" for s in ("teacher", "judge", "align", "sft")]
    cfg = load_config(None, over)
    with caplog.at_level(logging.INFO, logger="palign_ray.pipeline"):
        manifests = P.run_pipeline(cfg)
    released = [
        r.getMessage().split(":")[0]
        for r in caplog.records
        if "hardware released" in r.getMessage()
    ]
    assert released == [
        "stage teacher",
        "stage truncate",
        "stage train",
        "stage base_eval",
        "stage eval",
    ]  # each stage with Ray actors (engines, training ranks) handed its CPUs back
    from palign_ray.hardware import usable_cpus

    # the streaming stages (teacher, truncate) record their engine starts; eval's generation pool does not
    starts = [json.loads(f.read_text()) for f in (tmp_path / "run").glob("*/engines/*.json")]
    assert (
        len(starts) == 2 and {s["cpu_threads"] for s in starts} == {min(4, usable_cpus())}
    )  # one actor per stage: every usable core (ray.num_cpus=4 caps it), not Ray's one OpenMP thread
    assert list(manifests) == [
        "problems",
        "teacher",
        "truncate",
        "sft_data",
        "train",
        "base_eval",
        "eval",
    ]
    for name in ("problems", "teacher", "truncate"):
        assert manifests[name]["num_output"] + manifests[name]["num_quarantined"] == 4
    assert manifests["sft_data"]["num_output"] > 0
    run = tmp_path / "run"
    assert (run / "train" / "model" / "model.safetensors").is_file()
    assert (run / "eval" / "trained" / "metrics.json").is_file() and (
        run / "base_eval" / "base" / "metrics.json"
    ).is_file()
    report = (run / "report.md").read_text()
    assert (
        "Rows per stage" in report
        and "Cost per accepted SFT example" in report
        and "(trained)" in report
    )
    # the judge audit ran inside the stage on the seeded sample and reached the manifest and the report
    measured = manifests["truncate"]["judge_audit"]
    assert measured["audit"]["num_problems"] == 3 and measured["audit"]["samples"] == 1
    assert measured["known_cut"]["num_problems"] == 4  # reference traces of built-in problems
    assert measured["validity"]["status"] in ("valid", "invalid")
    assert "Is the judge valid?" in report and "| empty |" in report
    assert sum(s.get("audit_problems", 0) for s in manifests["truncate"]["summaries"]) == 3
    before = {p: p.stat().st_mtime_ns for p in run.rglob("manifest.json")}
    again = P.run_pipeline(cfg)
    assert {
        p: p.stat().st_mtime_ns for p in run.rglob("manifest.json")
    } == before  # nothing recomputed
    assert json.dumps(again, sort_keys=True) == json.dumps(manifests, sort_keys=True)
