"""palign compare: method parsing, stage placement (shared stages once), and a real two-method run that resumes."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from palign_ray.compare import run as C
from palign_ray.config import load_config
from tests.process_helpers import kill_when


def test_method_labels_defaults_and_validation(tmp_path):
    cfg = load_config(None, [f"run.run_dir={tmp_path}"])
    assert C.method_labels(cfg, None) == ["palign", "full_cot"]
    assert C.method_labels(load_config(None, ["run.methods=prefix_only,full_cot"]), None) == [
        "prefix_only",
        "full_cot",
    ]
    assert C.method_labels(cfg, ["fixed_ratio", "fixed_ratio:0.50"]) == [
        "fixed_ratio:0.25",
        "fixed_ratio:0.5",
    ]
    with pytest.raises(ValueError, match="twice"):
        C.method_labels(cfg, ["palign", "palign"])
    with pytest.raises(ValueError, match="at least two"):
        C.method_labels(cfg, ["palign"])
    with pytest.raises(ValueError, match="unknown method"):
        C.method_config(cfg, "palgn")
    with pytest.raises(ValueError, match="only fixed_ratio"):
        C.method_config(cfg, "palign:0.3")
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        C.method_config(cfg, "fixed_ratio:1.5")
    fr = C.method_config(cfg, "fixed_ratio:0.5")
    assert fr.run.method == "fixed_ratio" and fr.judge.fixed_ratio == 0.5
    ro = C.method_config(load_config(None, ["judge.calibration=contextual"]), "palign:rollout")
    assert (ro.run.method, ro.judge.verdict, ro.judge.calibration) == (
        "palign",
        "rollout",
        "absolute",
    )
    # the rollout arm judges on its own: its truncate is not the self-judge's
    runs = C.plan_compare(cfg, ["palign", "palign:rollout"])
    assert runs[0].dirs["truncate"] != runs[1].dirs["truncate"]
    assert runs[0].dirs["teacher"] == runs[1].dirs["teacher"]


def test_plan_shares_stages_whose_hash_is_equal(tmp_path):
    cfg = load_config(None, [f"run.run_dir={tmp_path}"])
    runs = {r.label: r for r in C.plan_compare(cfg, ["palign", "full_cot", "prefix_only"])}
    for stage in (
        "problems",
        "teacher",
        "truncate",
    ):  # truncate: palign and prefix_only judge alike; full_cot skips it
        assert {str(r.dirs[stage]) for r in runs.values() if stage in r.dirs} == {
            str(tmp_path / stage)
        }
    assert "truncate" not in runs["full_cot"].dirs and "align" not in runs["prefix_only"].dirs
    assert runs["palign"].dirs["align"] == tmp_path / "align"  # only palign aligns
    # the base student depends on neither the method nor its data: evaluated once for all
    assert {r.dirs["base_eval"] for r in runs.values()} == {tmp_path / "base_eval"}
    for stage in ("sft_data", "train", "eval"):
        assert len({r.dirs[stage] for r in runs.values()}) == 3
        assert runs["full_cot"].dirs[stage] == tmp_path / "methods" / "full_cot" / stage

    runs = {
        r.label: r
        for r in C.plan_compare(
            cfg, ["palign", "prefix_only", "fixed_ratio:0.25", "fixed_ratio:0.5"]
        )
    }
    assert (
        runs["palign"].dirs["truncate"]
        == runs["prefix_only"].dirs["truncate"]
        == tmp_path / "methods" / "palign" / "truncate"
    )
    assert (
        runs["fixed_ratio:0.5"].dirs["truncate"]
        == tmp_path / "methods" / "fixed_ratio-0.5" / "truncate"
    )
    assert (
        runs["fixed_ratio:0.25"].cfg.judge.search == "fixed_ratio"
        and runs["palign"].cfg.judge.search == "binary"
    )
    assert len({r.dirs["teacher"] for r in runs.values()}) == 1


def test_compare_command_is_registered():
    from palign_ray.cli import COMMANDS

    assert COMMANDS["compare"][0] == "palign_ray.cli.tools:compare_main"


def test_compare_qwen7b_config_is_the_papers_setting_and_validates(monkeypatch):
    """Every method's plan holds on the cluster (RAY_ADDRESS set; shared storage not mounted here)."""
    from palign_ray.checks import plan_problems

    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    cfg = load_config(Path(__file__).parents[1] / "jobs" / "configs" / "compare_qwen7b.yaml")
    runs = C.plan_compare(cfg, C.method_labels(cfg, None))
    assert [r.label for r in runs] == [
        "palign",
        "palign:rollout",
        "full_cot",
        "fixed_ratio:0.25",
        "fixed_ratio:0.5",
        "prefix_only",
    ]
    for r in runs:
        assert plan_problems(r.cfg, list(r.dirs), check_paths=False) == [], r.label
    s, e = cfg.sft, cfg.eval
    assert (s.model, s.lora, s.lora_r, s.lora_alpha, s.epochs, s.learning_rate) == (
        "Qwen/Qwen2.5-7B-Instruct",
        True,
        16,
        16,
        3,
        5e-5,
    )
    assert e.benchmarks == ("math500", "aime24", "aime25", "amc12") and e.num_problems == 0
    assert (e.num_samples, e.temperature, e.top_p, e.repetition_penalty) == (3, 0.6, 0.9, 1.05)
    assert (
        len({r.dirs["teacher"] for r in runs}) == 1
        and len({r.dirs["truncate"] for r in runs if "truncate" in r.dirs}) == 4
    )
    # the judged arms carry the audit at the cluster default, the rollout arm its variant judge
    assert cfg.judge.audit_problems == 256 and runs[1].cfg.judge.verdict == "rollout"


def test_compare_mini_config_plans_its_methods_on_shared_stages():
    from palign_ray.checks import plan_problems

    cfg = load_config(Path(__file__).parents[1] / "jobs" / "configs" / "compare_mini.yaml")
    runs = {r.label: r for r in C.plan_compare(cfg, C.method_labels(cfg, None))}
    assert list(runs) == ["full_cot", "palign", "palign:rollout", "fixed_ratio:0.61"]
    for r in runs.values():
        assert plan_problems(r.cfg, list(r.dirs), check_paths=False) == [], r.label
    run_dir = Path(cfg.run.run_dir)
    assert runs["palign"].dirs["truncate"] == run_dir / "methods" / "palign" / "truncate"
    assert (
        runs["palign"].dirs["base_eval"]
        == runs["full_cot"].dirs["base_eval"]
        == run_dir / "base_eval"
    )
    # Held out: the other side of the built-in split, so no training parameter draw is evaluated.
    assert (cfg.problems.builtin_split, cfg.eval.builtin_split) == ("train", "heldout")
    assert cfg.problems.builtin_style == "long"
    # design 2's fairness: one step count for every trained arm, eval room for the longest response
    assert cfg.sft.total_steps > 0 and cfg.align.num_samples >= 2
    assert cfg.eval.max_tokens >= 239 + cfg.align.max_tokens + 32
    assert runs["palign:rollout"].cfg.judge.verdict == "rollout"
    assert runs["palign"].dirs["truncate"] != runs["palign:rollout"].dirs["truncate"]
    # The extra methods the header offers: prefix_only shares palign's cuts, fixed_ratio has its own.
    more = C.plan_compare(cfg, ["full_cot", "palign", "prefix_only", "fixed_ratio:0.5"])
    assert more[2].dirs["truncate"] == more[1].dirs["truncate"] != more[3].dirs["truncate"]


def test_run_report_of_the_embedded_model_says_smoke_run(tmp_path):
    from palign_ray.report import write_run_report

    text = write_run_report(tmp_path, load_config(None, []), []).read_text()
    assert "Smoke run" in text and "make compare" in text
    assert (
        "Smoke run"
        not in write_run_report(tmp_path, load_config(None, ["sft.model=/m"]), []).read_text()
    )


def _manifest_mtimes(run: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in run.rglob("manifest.json")}


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_real_compare_tiny_model_shares_stages_and_resumes(
    tmp_path, tiny_model, ray_session, caplog
):
    """Two methods for real on the tiny model: problems/teacher/truncate/base_eval run once; a killed compare resumes."""
    run = tmp_path / "run"
    over = [
        f"run.run_dir={run}",
        "problems.num_problems=4",
        "teacher.num_samples=1",
        "teacher.max_tokens=8",
        "teacher.use_reference_solutions=true",
        "sft.max_steps=1",
        "sft.num_workers=2",
        "eval.num_problems=3",
        "eval.num_samples=2",
        "eval.max_tokens=8",
        "eval.bootstrap_samples=200",
        "ray.num_cpus=4",
    ] + [f"{s}.model={tiny_model}" for s in ("teacher", "judge", "align", "sft")]
    cfg = load_config(None, over)
    methods = ["prefix_only", "full_cot"]
    # A killed compare: SIGKILL the CLI (and its local Ray) once the first method has trained.
    first_trained = run / "methods" / "prefix_only" / "train" / "manifest.json"
    kill_when(
        [sys.executable, "-m", "palign_ray", "compare", "--methods", ",".join(methods), *over],
        tmp_path,
        tmp_path / "killed.out",
        first_trained.is_file,
        "after the first method's training",
        timeout_s=1200,
    )
    at_kill = _manifest_mtimes(run)
    assert {p.parent.name for p in at_kill} >= {
        "problems",
        "teacher",
        "truncate",
        "sft_data",
        "train",
    }
    assert not (run / "methods" / "full_cot" / "train" / "manifest.json").exists()
    plan = [d for r in C.plan_compare(cfg, methods) for d in r.dirs.values()]
    missing = sorted({d for d in plan if d / "manifest.json" not in at_kill})
    with caplog.at_level(logging.INFO, logger="palign_ray.pipeline"):
        res = C.run_compare(cfg, methods)
    started = [r.getMessage() for r in caplog.records if r.getMessage().endswith(": start")]
    # Only what had no manifest ran again, each once; the shared stages (base_eval too) ran once in all.
    assert sorted(started) == sorted(f"stage {d.name}: start" for d in missing)
    after = _manifest_mtimes(run)
    assert all(after[p] == t for p, t in at_kill.items())
    stage_manifests = [p for p in after if p.parent.name != "samples"]
    # one problems/teacher/truncate/base_eval, per method sft_data/train/eval
    assert len(stage_manifests) == 4 + 2 * 3
    assert len(after) - len(stage_manifests) == 1 + 2  # each evaluation's committed samples
    assert (run / "base_eval" / "base" / "metrics.json").is_file()
    for m in methods:
        assert (run / "methods" / m / "eval" / "trained" / "metrics.json").is_file()

    # The report: rows base + methods, scores equal to each evaluation's own metrics.json, paired differences.
    out = run / "compare"
    assert json.loads((out / "compare.json").read_text())["methods"] == methods
    assert (out / "scores.png").is_file() and (out / "length_vs_accuracy.png").is_file()
    samples = pq.read_table(out / "samples.parquet").to_pylist()  # every sample behind Table 1
    assert {s["method"] for s in samples} == {"base", *methods}
    assert all(isinstance(s["generation"], str) for s in samples)
    assert list(res["scores"]) == ["base", *methods] and list(res["paired_vs_baseline"]) == [
        "prefix_only"
    ]
    assert list(res["paired_vs_base"]) == methods
    for m in methods:
        metrics = json.loads(
            (run / "methods" / m / "eval" / "trained" / "metrics.json").read_text()
        )
        for k in ("1", "2"):
            assert res["scores"][m][f"pass@{k}"]["builtin"]["value"] == pytest.approx(
                metrics["benchmarks"]["builtin"]["pass@k"][k]
            )
        sft = json.loads((run / "methods" / m / "sft_data" / "manifest.json").read_text())
        assert res["facts"][m]["sft_examples"] == sft["num_output"] > 0
    cell = res["paired_vs_baseline"]["prefix_only"]["pass@1"]["average"]
    assert (
        cell["num_problems"] == 3 and cell["num_unpaired"] == 0 and 0 <= cell["p_permutation"] <= 1
    )
    assert res["facts"]["full_cot"]["mean_prefix_ratio_sentences"] == 1.0
    assert res["facts"]["prefix_only"]["stages"]["teacher"]["shared_with"] == ["full_cot"]
    report = (out / "report.md").read_text()
    assert (
        "Table 1: pass@1" in report and "prefix_only − full_cot" in report and "| base |" in report
    )

    # A lost final manifest: only that stage is redone (its evaluations are reused), everything else is skipped.
    lost = run / "methods" / "prefix_only" / "eval" / "manifest.json"
    lost.unlink()
    before = _manifest_mtimes(run)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="palign_ray.pipeline"):
        C.run_compare(cfg, methods)
    assert [r.getMessage() for r in caplog.records if r.getMessage().endswith(": start")] == [
        "stage eval: start"
    ]
    assert sum("already evaluated" in r.getMessage() for r in caplog.records) == 1
    again = _manifest_mtimes(run)
    assert lost in again and all(again[p] == t for p, t in before.items())


def _fake_eval(d: Path, correct: dict[str, list[bool]], tokens: int) -> None:
    """An evaluation's files as palign_ray.eval.report.write_report leaves them (only what the report reads)."""
    d.mkdir(parents=True)
    rows = [
        {
            "benchmark": "b",
            "problem_id": pid,
            "sample_index": i,
            "correct": c,
            "num_generated_tokens": tokens,
        }
        for pid, cs in correct.items()
        for i, c in enumerate(cs)
    ]
    (d / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "quarantine.jsonl").write_text("")
    (d / "metrics.json").write_text(
        json.dumps({"timing": {"generated_tokens": tokens * len(rows)}})
    )
    (d / ".done").write_text("x")


def test_report_numbers_from_eval_files_hand_computed(tmp_path):
    """Report logic on hand-written evaluation files (no Ray): scores, paired test, base check, files written."""
    from palign_ray.compare.report import write_compare_report

    cfg = load_config(
        None, [f"run.run_dir={tmp_path}", "eval.num_samples=2", "eval.bootstrap_samples=50"]
    )
    runs = C.plan_compare(cfg, ["palign", "full_cot"])
    base = {"p1": [False, False], "p2": [True, False]}
    assert runs[0].dirs["base_eval"] == runs[1].dirs["base_eval"]
    _fake_eval(runs[0].dirs["base_eval"] / "base", base, 50)
    for r, trained, n_tok in (
        (runs[0], {"p1": [True, True], "p2": [True, True]}, 10),
        (runs[1], {"p1": [True, False], "p2": [True, False]}, 30),
    ):
        _fake_eval(r.dirs["eval"] / "trained", trained, n_tok)
    res = write_compare_report(cfg, runs, tmp_path / "compare", baseline="full_cot")
    sc = res["scores"]
    assert [sc[x]["pass@1"]["b"]["value"] for x in ("base", "palign", "full_cot")] == pytest.approx(
        [0.25, 1.0, 0.5]
    )
    assert [
        sc[x]["pass@2"]["average"]["value"] for x in ("base", "palign", "full_cot")
    ] == pytest.approx([0.5, 1.0, 1.0])
    d = res["paired_vs_baseline"]["palign"]["pass@1"]["b"]
    # diffs 0.5, 0.5: of the 4 sign patterns ++ and -- reach |mean| 0.5; sign test 2 wins of 2
    assert (
        d["diff"] == pytest.approx(0.5)
        and d["p_permutation"] == pytest.approx(0.5)
        and d["p_sign_test"] == pytest.approx(0.5)
    )
    assert res["paired_vs_baseline"]["palign"]["pass@2"]["b"]["ties"] == 2 and list(
        res["paired_vs_baseline"]
    ) == ["palign"]
    vs_base = res["paired_vs_base"]["full_cot"]["pass@1"]["b"]  # diffs 0.5 (p1), 0 (p2)
    assert list(res["paired_vs_base"]) == ["palign", "full_cot"] and vs_base[
        "diff"
    ] == pytest.approx(0.25)
    assert (vs_base["wins"], vs_base["ties"], vs_base["p_permutation"]) == (1, 1, 1.0)
    assert res["mean_response_tokens"] == {"base": 50, "palign": 10, "full_cot": 30}
    stages = res["facts"]["palign"]["stages"]
    assert res["base_consistency"] == {
        "num_evaluations": 1,
        "agree": True,
        "differing_problems": [],
    }
    assert stages["eval"]["tokens"] == {"generated": 4 * 10}
    assert stages["base_eval"]["tokens"] == {"generated": 4 * 50}
    report = (tmp_path / "compare" / "report.md").read_text()
    assert (
        "| palign | 100.00 [100.00, 100.00] |" in report
        and "| palign − full_cot | +50.00" in report
    )
    assert "| full_cot − base | +25.00" in report and "evaluated once" in report
    from palign_ray.compare.markdown import headline_lines

    assert headline_lines(res)[1].split() == [
        "palign",
        "pass@1",
        "100.00",
        "[100.00,",
        "100.00]",
        "·",
        "pass@2",
        "100.00",
        "[100.00,",
        "100.00]",
    ]
    assert "| palign | not done (shared: full_cot) |" in report  # stages that did not run say so
    assert (tmp_path / "compare" / "scores.png").is_file() and (
        tmp_path / "compare" / "length_vs_accuracy.png"
    ).is_file()
    # Base evaluations in two directories (a config whose base_eval differed per method) are checked against each other.
    other = tmp_path / "other_base_eval"
    _fake_eval(other / "base", {"p1": [True, False], "p2": [True, False]}, 50)
    runs[1] = dataclasses.replace(runs[1], dirs={**runs[1].dirs, "base_eval": other})
    res = write_compare_report(cfg, runs, tmp_path / "compare", baseline="full_cot")
    assert res["base_consistency"] == {
        "num_evaluations": 2,
        "agree": False,
        "differing_problems": ["b/p1"],
    }


def test_samples_parquet_recomputes_table_1(tmp_path):
    """compare/samples.parquet alone gives every Table-1 pass@1 cell, failed problems included."""
    from palign_ray.compare.report import write_compare_report

    cfg = load_config(
        None, [f"run.run_dir={tmp_path}", "eval.num_samples=2", "eval.bootstrap_samples=10"]
    )
    runs = C.plan_compare(cfg, ["palign", "full_cot"])
    _fake_eval(runs[0].dirs["base_eval"] / "base", {"p1": [False, False], "p2": [True, False]}, 5)
    palign = runs[0].dirs["eval"] / "trained" / "samples.jsonl"
    _fake_eval(palign.parent, {"p1": [True, True], "p2": [True, False]}, 6)
    graded = [json.loads(line) for line in palign.read_text().splitlines()]
    text = {"generation": "so \\boxed{4}", "extracted": "4", "finish_reason": "stop"}
    palign.write_text("".join(json.dumps({**r, **text}) + "\n" for r in graded))
    full = runs[1].dirs["eval"] / "trained"
    _fake_eval(full, {"p1": [True, False]}, 7)
    failed = {"stage": "eval", "problem_id": "p2", "reason": "generation_failed", "benchmark": "b"}
    (full / "quarantine.jsonl").write_text(json.dumps(failed) + "\n")
    res = write_compare_report(cfg, runs, tmp_path / "compare", baseline="full_cot")

    rows = pq.read_table(tmp_path / "compare" / "samples.parquet").to_pylist()
    per_problem: dict[tuple[str, str, str], list[bool]] = {}
    for r in rows:
        per_problem.setdefault((r["method"], r["benchmark"], r["problem_id"]), []).append(
            r["correct"]
        )
    for method, cells in res["scores"].items():
        means = [sum(c) / len(c) for (m, _, _), c in per_problem.items() if m == method]
        assert cells["pass@1"]["b"]["value"] == pytest.approx(sum(means) / len(means))
    assert {r["method"] for r in rows} == {"base", "palign", "full_cot"} and len(rows) == 12
    lost = [r for r in rows if r["failed"]]
    assert [(r["method"], r["problem_id"], r["sample_index"]) for r in lost] == [
        ("full_cot", "p2", 0),
        ("full_cot", "p2", 1),
    ]
    assert all(not r["correct"] and r["generation"] == "" for r in lost)
    kept = [r for r in rows if r["method"] == "palign"]
    assert [(r["problem_id"], r["sample_index"], r["correct"]) for r in kept] == [
        ("p1", 0, True),
        ("p1", 1, True),
        ("p2", 0, True),
        ("p2", 1, False),
    ]
    assert {(r["generation"], r["extracted"], r["finish_reason"], r["failed"]) for r in kept} == {
        ("so \\boxed{4}", "4", "stop", None)
    }
    assert {r["num_generated_tokens"] for r in kept} == {6}
    assert res["scores"]["full_cot"]["pass@1"]["b"]["value"] == pytest.approx(0.25)


def test_a_method_whose_judge_is_invalid_is_marked_in_table_1_and_the_judge_table(tmp_path):
    """The truncate manifest's judge_audit reaches the compare report beside the method (issue 24.4)."""
    from palign_ray.compare.markdown import headline_lines
    from palign_ray.compare.report import write_compare_report
    from palign_ray.judge.measure import audit_summary, judge_measurement

    cfg = load_config(
        None, [f"run.run_dir={tmp_path}", "eval.num_samples=1", "eval.bootstrap_samples=50"]
    )
    runs = C.plan_compare(cfg, ["palign", "full_cot"])
    _fake_eval(runs[0].dirs["base_eval"] / "base", {"p1": [False]}, 5)
    for r in runs:
        _fake_eval(r.dirs["eval"] / "trained", {"p1": [True]}, 5)
    # every cut keeps the whole trace, and solves no more than the empty prefix
    rec = {"prefix_sentences": 6, "num_sentences": 6, "prefix_ratio_sentences": 1.0}
    counts = {f"correct_{a}": 0 for a in ("cut", "shorter", "full", "empty")}
    audit = {"samples": 2, **counts, "errors": 0, "prompt_tokens": 1, "generated_tokens": 1}
    assert audit_summary([audit]) is not None
    recs = [{**rec, "known_cut": -1, "audit": audit, "probes": []}] * 8
    m = judge_measurement(recs, judged=True, fixed_ratio=0.25)
    assert m["validity"]["status"] == "invalid"
    trunc = runs[0].dirs["truncate"]
    trunc.mkdir(parents=True)
    (trunc / "manifest.json").write_text(json.dumps({"judge_audit": m}))
    res = write_compare_report(cfg, runs, tmp_path / "compare", baseline="full_cot")
    report = (tmp_path / "compare" / "report.md").read_text()
    assert "| palign (judge invalid) | 100.00" in report and "| full_cot | 100.00" in report
    assert "## Judge audit per method" in report and "- palign: degenerate: 100% of 8" in report
    assert headline_lines(res)[1].startswith("palign (judge invalid)")
    assert res["facts"]["full_cot"]["judge_audit"] is None


def test_novel_answer_subset_and_templates_of_the_builtin_heldout_set(tmp_path, monkeypatch):
    """Issue 28: 29 of the 70 held-out problems share a gold answer with a training problem of their template."""
    from palign_ray.builtin import builtin_problems
    from palign_ray.compare import groups as G
    from palign_ray.compare import markdown as MD
    from palign_ray.compare import table as T
    from palign_ray.grading import normalize_gold

    cfg = load_config(
        Path(__file__).parents[1] / "jobs" / "configs" / "compare_mini.yaml",
        [f"run.run_dir={tmp_path}"],
    )
    p = cfg.problems
    train = [
        (r["template"], normalize_gold(r["answer"]))
        for r in builtin_problems(p.num_problems, p.builtin_seed, "train", "long")
    ]
    monkeypatch.setattr(G, "_training_answers", lambda d: train)
    runs = C.plan_compare(cfg, ["full_cot", "palign"])
    g = G.problem_groups(cfg, runs)
    novel = g["novel_answer"]
    assert g["num_problems"] == 70 and len(novel) == 41
    assert len(g["templates"]) == 7 and all(len(ids) == 10 for ids in g["templates"].values())
    every = set().union(*g["templates"].values())
    # right exactly where the answer was seen in training: 0 on the novel subset, 1 on the rest
    rows = {
        "base": {"builtin": {i: [False] for i in every}},
        "full_cot": {"builtin": {i: [i not in novel] for i in every}},
    }
    sub = T.subset_scores(rows, g, "full_cot", ["builtin"], [1], 50, 0)
    assert sub["novel_answer"]["scores"]["full_cot"]["pass@1"]["average"]["value"] == 0.0
    assert sub["novel_answer"]["paired_vs_base"]["full_cot"]["pass@1"]["average"]["diff"] == 0.0
    per = sub["per_template"]
    assert sum(t["num_problems"] for t in per.values()) == 70
    assert sum(
        t["scores"]["full_cot"]["pass@1"]["average"]["value"] * t["num_problems"]
        for t in per.values()
    ) == pytest.approx(29)
    assert MD._p(1 / 10001) == " < 0.001" and MD._p(0.25) == "=0.25"
    room = {"facts": {"a": {"sft_max_response_tokens": 420}}, "eval": {"max_tokens": 448}}
    assert "TOO SHORT" in MD._room_line(room)
    room["facts"]["a"]["sft_max_response_tokens"] = 416
    assert "enough" in MD._room_line(room)
