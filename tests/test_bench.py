"""Smoke tests of the bench harness's pure parts (no engines, no timings asserted)."""

from __future__ import annotations

import argparse
import datetime as dt
import json

import pytest

from bench import common, judge_bench, ray_bench, report, run, sft_bench


def _row(
    pid: str, k: int, n: int, probes: list[tuple[int, int]], rounds: int | None = None
) -> dict:
    """A truncate output row: probes = [(prompt_tokens, cached_tokens), ...]."""
    return {
        "problem_id": pid,
        "prefix_sentences": k,
        "num_sentences": n,
        "num_judged_sentences": n,
        "prefix_ratio_sentences": k / n,
        "prefix_ratio_chars": k / n / 2,
        "num_probes": len(probes),
        "num_rounds": rounds if rounds is not None else len(probes),
        "prompt_tokens": sum(p for p, _ in probes),
        "cached_tokens": sum(c for _, c in probes),
        "generated_tokens": len(probes),
        "is_sufficient": True,
        "probe_trace": [
            {"prompt_tokens": p, "cached_tokens": c, "verdict": True} for p, c in probes
        ],
    }


def test_traces_strip_instruction_and_markers_and_interleave():
    lines = [
        json.dumps(
            {
                "prompt_ori": judge_bench.INSTRUCTION + "What is 1+1?",
                "answer": "2",
                "output": ["<Begin_of_Draft>a. b.<End_of_Draft> \\boxed{2}", "c"],
            }
        ),
        "",
        json.dumps({"prompt_ori": "Q2", "answer": 3, "output": ["x", "y", "z"]}),
    ]
    problems = judge_bench.traces_from_lines("aime24", lines)
    assert [len(p) for p in problems] == [2, 3]
    first = problems[0][0]
    assert (
        first["question"] == "What is 1+1?"
        and first["cot"] == "a. b. \\boxed{2}"
        and first["answer"] == "2"
    )
    assert problems[1][0]["question"] == "Q2" and problems[1][0]["answer"] == "3"
    order = [t["problem_id"] for t in judge_bench.interleave(problems, 0)]
    assert order == ["aime24-00-0", "aime24-02-0", "aime24-00-1", "aime24-02-1", "aime24-02-2"]
    assert len(judge_bench.interleave(problems, 3)) == 3


def test_load_traces_real_files(shared_data):
    traces = judge_bench.load_traces(shared_data, 64)
    assert len(traces) == 64 and len({t["problem_id"] for t in traces}) == 64
    assert len({t["question"] for t in traces[:60]}) == 60  # output 0 of the 60 problems first
    assert not any(
        "Draft>" in t["cot"] or t["question"].startswith("Please reason") for t in traces
    )


def test_agreement_counts_identical_prefixes_and_ratio_gap():
    a = [
        _row("p1", 2, 10, [(100, 0)]),
        _row("p2", 5, 10, [(100, 0)]),
        _row("only-a", 1, 10, [(1, 0)]),
    ]
    b = [_row("p1", 2, 10, [(100, 0)]), _row("p2", 3, 10, [(100, 0)])]
    got = judge_bench.agreement(a, b)
    assert got["num_common"] == 2
    assert got["identical_prefix_share"] == 0.5
    assert got["mean_abs_diff_prefix_ratio_sentences"] == pytest.approx(0.1)
    assert judge_bench.agreement(a, []) == {"num_common": 0}


def test_search_optimality_against_bounds():
    rows = [_row("p1", 1, 7, [(1, 0)] * 3, rounds=3), _row("p2", 1, 8, [(1, 0)] * 5, rounds=2)]
    got = judge_bench.search_optimality(rows, kary_k=3)
    # ceil(log2(8)) = 3, ceil(log2(9)) = 4; k-ary k=3: ceil(log4(8)) = 2, ceil(log4(9)) = 2
    assert got["mean_binary_probe_bound"] == 3.5 and got["mean_kary_round_bound"] == 2.0
    assert got["num_probes_within_binary_bound"] == 1  # p2 made 5 > 4 probes
    assert got["num_rounds_within_kary_bound"] == 1  # p1 took 3 > 2 rounds
    assert got["probes_over_binary_bound"] == pytest.approx(8 / 7, abs=1e-4)


def test_cache_efficiency_is_computed_over_longest_probe():
    # 3 probes of 300/200/400 tokens, 256 cached twice: computed 900-512 = 388 of a 400-token longest probe
    rows = [
        _row("p1", 1, 9, [(300, 0), (200, 256), (400, 256)]),
        _row("p2", 1, 9, [(100, 0), (100, 0)]),
    ]
    got = judge_bench.cache_efficiency(rows)
    assert got["num_problems"] == 2
    assert got["p0"] == pytest.approx(0.97) and got["p100"] == pytest.approx(2.0)


def test_mode_stats_and_speedup():
    rows = [_row("p1", 2, 10, [(100, 50), (120, 100)]), _row("p2", 3, 10, [(80, 0)])]
    s = judge_bench.mode_stats(rows, [4.0, 2.0, 3.0])
    assert s["median_s"] == 3.0 and s["s_per_trace"] == 1.5 and s["probes"] == 3
    assert s["computed_prompt_tokens"] == 300 - 150 and s["enough_share"] == 1.0
    sp = judge_bench.compare_to_reference(
        {
            "paper_reference": {"s_per_trace": 6.0},
            "fast": {"s_per_trace": 1.5},
            "broken": {"s_per_trace": None},
        }
    )
    assert sp == {"fast": 4.0, "broken": None}


def test_mode_config_changes_only_the_given_fields():
    from palign_ray.config import load_config

    cfg = load_config(None, ["judge.kary_k=5"])
    m = judge_bench.mode_config(
        cfg, {"search": "kary", "verdict": "logprob"}, {"enable_prefix_caching": False}
    )
    assert (m.judge.search, m.judge.kary_k, m.engine.enable_prefix_caching) == ("kary", 5, False)
    assert cfg.engine.enable_prefix_caching is True


def test_sections_sizes_and_config():
    assert run.parse_sections("") == list(run.SECTIONS)
    assert run.parse_sections("sft, cache,search") == ["judge", "sft"]
    with pytest.raises(ValueError, match="unknown section"):
        run.parse_sections("judge,gpu")
    args = run.build_parser().parse_args(
        ["--quick", "--set-size", "judge_subset=3", "judge.kary_k=4"]
    )
    assert (
        run.sizes_from(args).judge_subset == 3
        and run.sizes_from(args).judge_traces == run.QUICK.judge_traces
    )
    cfg = run.config_from(args)
    assert (
        cfg.judge.kary_k == 4
        and cfg.engine.max_model_len == 2048
        and cfg.judge.max_cot_tokens == 1536
    )
    with pytest.raises(ValueError, match="unknown size"):
        run.sizes_from(run.build_parser().parse_args(["--set-size", "nope=1"]))
    assert run.Sizes().judge_traces >= 64  # the minimum


def test_result_paths_and_helpers(tmp_path):
    j, m = common.result_paths("box/1 a", dt.date(2026, 11, 26), tmp_path)
    assert j.name == "2026-11-26-box-1-a.json" and m.name == "2026-11-26-box-1-a.md"
    common.write_results({"x": 1}, j, "# hi\n")
    assert json.loads(j.read_text()) == {"x": 1} and m.read_text() == "# hi\n"
    assert common.median([3, 1, 2]) == 2 and common.median([]) is None
    assert (
        common.ratio(1, 4) == 0.25 and common.ratio(1, 0) is None and common.ratio(None, 2) is None
    )
    hw = common.hardware()
    assert hw["num_cores"] and "torch" in hw["versions"]


def test_generation_items_one_per_problem():
    traces = [
        {"problem_id": "aime24-00-0", "question": "Q0"},
        {"problem_id": "aime24-00-1", "question": "Q0"},
        {"problem_id": "aime24-01-0", "question": "Q1"},
    ]
    items = ray_bench.generation_items(traces, 5)
    assert [i["problem_id"] for i in items] == ["aime24-00", "aime24-01"]
    assert items[0]["prompt"].endswith("Q0")
    assert ray_bench.throughput(100, 4.0) == 25.0 and ray_bench.throughput(1, 0) is None


def test_sft_rows_and_padding(shared_data):
    rows = sft_bench.gsm8k_rows(shared_data, 5)
    assert len(rows) == 5 and all(r["answer"] and "####" not in r["cot"] for r in rows)
    pad = sft_bench.padding([100, 300, 200, 50, 400, 120], 0, 512, (2,))
    p = pad["micro_batch_2"]
    assert (
        p["padding_share_packed"] <= p["padding_share_unpacked"]
        and p["num_sequences_packed"] < p["num_sequences_unpacked"]
    )


def test_markdown_renders_sections_and_failures():
    mode = {"num_traces": 2, "repeats": 1, "median_s": 1.0, "s_per_trace": 0.5, "probes": 3}
    res = {
        "started": "now",
        "hardware": {"host": "h"},
        "sizes": {},
        "sections": {
            "judge": {
                "subset": {
                    "modes": {"paper_reference": mode, "batched_logprob": mode},
                    "speedup_vs_paper_reference": {"batched_logprob": 1.0},
                },
                "full": {
                    "modes": {
                        "batched_logprob": {
                            **mode,
                            "search_optimality": {"mean_probes": 5.5},
                            "cache_efficiency": {"p50": 1.1},
                        }
                    }
                },
            },
            "ray": {"error": "RuntimeError('boom')", "traceback": "tb"},
        },
    }
    md = report.markdown(res)
    assert (
        "| batched_logprob |" in md and "5.5" in md and "**FAILED**: `RuntimeError('boom')`" in md
    )
    assert "2026-11-26-h200-sft-packing.json" in md


def test_child_writes_error_instead_of_raising(tmp_path, monkeypatch):
    out = tmp_path / "s.json"
    monkeypatch.setattr(
        run, "run_section", lambda name, args: (_ for _ in ()).throw(RuntimeError("nope"))
    )
    rc = run.child_main(argparse.Namespace(section="judge", section_out=str(out)))
    assert rc == 1 and "nope" in json.loads(out.read_text())["error"]


def test_threads_section_runs_both_settings_and_reports_the_ratio(monkeypatch):
    seen = []

    def fake_spawn(name, argv, env=None):
        seen.append((name, env.get("OMP_NUM_THREADS")))
        tps = 100.0 if env.get("OMP_NUM_THREADS") == "1" else 25.0
        return {
            "tokens_per_s_generate": tps,
            "section_wall_s": 10.0,
            "load_avg_before": [0.1],
            "load_avg_after": [0.2],
        }

    monkeypatch.setattr(run, "spawn", fake_spawn)
    out = run.threads_section(["--quick"])
    assert seen == [
        ("threads", "1"),
        ("threads", None),
    ]  # the second child runs without the variable
    assert out["tokens_per_s_ratio_unset_vs_1"] == 0.25 and out["section_wall_s"] == 20.0
    md = report.markdown({"sections": {"threads": out}})
    assert "| unset |" in md and "0.25" in md


def test_worker_niceness_cpu_shares_come_from_proc_stat_deltas():
    from bench.worker_niceness import _share

    # /proc/stat columns: user nice system idle iowait irq softirq steal ...
    before = [100, 0, 10, 50, 0, 0, 0, 5, 0, 0]
    after = [160, 0, 20, 80, 0, 0, 0, 15, 0, 0]  # +60 user, +10 system, +30 idle, +10 steal
    assert _share(before, after) == {"idle": 0.2727, "steal": 0.0909}


def test_design_report_prints_the_verdict_and_writes_arms_and_verdict(tmp_path, capsys):
    import json

    from bench.worker_niceness import report

    out = tmp_path / "r.json"
    report("design x", 8, [{"arm": "plain", "tokens_per_s": 1.0}], {"goal_met": False}, str(out))
    assert json.loads(capsys.readouterr().out) == {
        "design": "design x",
        "prompts": 8,
        "goal_met": False,
    }
    assert json.loads(out.read_text())["arms"] == [{"arm": "plain", "tokens_per_s": 1.0}]


def test_engine_thread_verdict_pairs_neighbours_and_drops_stolen_pairs():
    from bench.engine_thread import verdict

    def arm(tps, steal=0.01):
        return {"tokens_per_s": tps, "steal": steal}

    # stage, plain, stage, plain, stage, plain: the middle pair ran under 5% steal
    got = verdict([arm(96), arm(100), arm(50, 0.05), arm(100), arm(98), arm(100)])
    assert [p["ratio"] for p in got["pairs"]] == [0.96, 0.5, 0.98]
    assert [p["valid"] for p in got["pairs"]] == [True, False, True]
    assert got["mean_valid_ratio"] == 0.97 and got["goal_met"] is True
    # one valid pair is not enough, and a failed arm (no tokens/s) is never a valid pair
    lone = verdict([arm(99), arm(100), {"error": "x"}, arm(100), arm(99, 0.2), arm(100)])
    assert lone["goal_met"] is False and [p["valid"] for p in lone["pairs"]] == [True, False, False]
    assert verdict([arm(90), arm(100), arm(92), arm(100)])["goal_met"] is False


def test_lean_ray_verdict_needs_two_clean_triplets_and_a_gain_in_each():
    from bench.lean_ray import verdict

    def arm(tps, steal=0.01):
        return {"tokens_per_s": tps, "steal": steal}

    # default, lean, plain x3: the middle triplet's plain arm ran under 5% steal
    got = verdict(
        [arm(90), arm(96), arm(100), arm(90), arm(99), arm(100, 0.05)]
        + [arm(92), arm(95), arm(100)]
    )
    assert [t["valid"] for t in got["triplets"]] == [True, False, True]
    assert got["mean_lean_plain"] == 0.955 and got["goal_met"] is True
    assert got["mean_lean_default"] == 1.05 and got["adopt_lean"] is True
    # a mean gain with one triplet losing does not adopt; a lean mean under 0.95 does not meet the goal
    mixed = verdict([arm(90), arm(99), arm(100), arm(95), arm(94), arm(100)])
    assert mixed["mean_lean_default"] == 1.044 and mixed["adopt_lean"] is False
    assert mixed["mean_lean_plain"] == 0.965 and mixed["goal_met"] is True
    assert verdict([arm(90), arm(93), arm(100), arm(90), arm(94), arm(100)])["goal_met"] is False
    # a failed arm (no tokens/s) never makes a valid triplet; one valid triplet is not enough
    lone = verdict([arm(90), {"error": "x"}, arm(100), arm(90), arm(99), arm(100)])
    assert lone["goal_met"] is False and lone["adopt_lean"] is False


def test_background_load_verdict_reads_the_ratio_against_both_predictions():
    from bench.background_load import verdict

    def plain(tps, steal=0.01):
        return {"tokens_per_s": tps, "steal": steal}

    def loaded(tps, share=0.05, steal=0.01):
        return {"tokens_per_s": tps, "steal": steal, "load_share": share}

    # load 5% of the host: CPU share only predicts 0.95, twice the CPU 0.90
    doubled = verdict([plain(100), loaded(90), plain(100), loaded(91)])
    assert doubled["mean_ratio"] == 0.905 and doubled["supports"] == "about twice the CPU"
    assert doubled["predicted_share_only"] == 0.95 and doubled["predicted_doubled"] == 0.9
    assert verdict([plain(100), loaded(95), plain(100), loaded(94)])["supports"] == "CPU share only"
    assert (
        verdict([plain(100), loaded(92.5), plain(100), loaded(92.5)])["supports"] == "inconclusive"
    )
    # a stolen pair or a failed arm does not count; one valid pair is too few
    few = verdict([plain(100), loaded(90, steal=0.1), plain(100), {"error": "x"}])
    assert few["supports"] == "too few valid pairs"
    assert [p["valid"] for p in few["pairs"]] == [False, False]


def test_generation_span_is_the_union_of_overlapping_part_windows():
    from bench.scale_bench import generation_span

    class Parts:
        def commits(self):
            return [
                {"summary": {"generation_window": [10.0, 40.0], "generated_tokens": 300}},
                {"summary": {"generation_window": [20.0, 50.0], "generated_tokens": 100}},
            ]

    assert generation_span(Parts()) == (400, 40.0)  # not 30 + 30 seconds
