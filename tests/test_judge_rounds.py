"""Batched judge rounds: loop logic on a scripted engine, then real Ray Data + vLLM actor pools."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time

import pytest

from palign_ray.config import (
    Config,
    EngineConfig,
    JudgeConfig,
    RayConfig,
    RunConfig,
    config_from_dict,
)
from palign_ray.engines.fake import FakeEngine
from palign_ray.judge.contract import OUTPUT_COLUMNS, check_input
from palign_ray.judge.probes import judge_tools
from palign_ray.judge.prompts import verdict_tokens
from palign_ray.judge.rounds import judge_rows
from palign_ray.judge.stage import truncate_rows
from palign_ray.judge.summary import quantiles, summarize
from tests.judge_helpers import MARK, reasoning_of, rows_for


def logprob_judge(tokenizer):
    """ENOUGH iff the decisive sentence is in the prefix: a monotone judge."""
    vt = verdict_tokens(tokenizer)

    def respond(ids, sp, i):
        ok = MARK in reasoning_of(tokenizer, ids)
        pe, pn = (0.9, 0.1) if ok else (0.2, 0.8)
        return ("EN" if ok else "NOT"), {vt.enough_id: math.log(pe), vt.not_enough_id: math.log(pn)}

    return respond


JCFG = JudgeConfig()
ECFG = EngineConfig(max_model_len=2048)


def run_fake(tokenizer, rows, jcfg=JCFG, respond=None, ecfg=ECFG):
    builder, vt = judge_tools(tokenizer, jcfg)
    engine = FakeEngine(respond or logprob_judge(tokenizer), tokenizer)
    out, bad, calls = judge_rows(engine, builder, vt, rows, jcfg, ecfg, "fake", seed=0)
    return engine, out, bad, calls


def test_rounds_one_engine_call_per_round_all_problems_advance(tokenizer):
    cases = [(12, 5), (7, 1), (20, 20), (3, 9), (9, 4), (1, 1)]
    engine, out, bad, calls = run_fake(tokenizer, rows_for(cases))
    assert not bad and len(out) == len(cases)
    by_id = {r["problem_id"]: r for r in out}
    assert calls == len(engine.calls) == max(r["num_rounds"] for r in out)
    for rnd, prompts in enumerate(engine.calls, start=1):
        unresolved = [r for r in out if r["num_rounds"] >= rnd]
        assert len(prompts) == len(unresolved), (
            "every unresolved problem advances by one probe per round"
        )
    for i, (n, t) in enumerate(cases):
        r = by_id[f"p{i}"]
        assert set(r) == set(OUTPUT_COLUMNS)
        assert r["prefix_sentences"] == (t if t <= n else n) and r["is_sufficient"] == (t <= n)
        assert r["num_probes"] <= math.ceil(math.log2(n + 1)) and not r["non_monotone"]
        assert r["prefix"] == r["cot"][: r["prefix_char_end"]]
        assert (MARK in r["prefix"]) == (t <= n)
        assert r["prefix_ratio_sentences"] == r["prefix_sentences"] / n
        assert [p["round"] for p in r["probe_trace"]] == list(range(1, r["num_rounds"] + 1))
        assert all(0.0 <= p["p_enough"] <= 1.0 for p in r["probe_trace"])
        assert r["prompt_tokens"] == sum(p["prompt_tokens"] for p in r["probe_trace"])
        if r["num_rounds"] > 1:  # later probes reuse head + question + CoT tokens of earlier ones
            assert all(p["cached_tokens"] > 0 for p in r["probe_trace"][1:])


@pytest.mark.parametrize("search,kk", [("kary", 3), ("linear", 1)])
def test_kary_and_linear_agree_with_binary(tokenizer, search, kk):
    cases = [(12, 5), (7, 1), (20, 20), (3, 9), (9, 4)]
    _, ref, _, _ = run_fake(tokenizer, rows_for(cases))
    engine, out, _, calls = run_fake(
        tokenizer, rows_for(cases), dataclasses.replace(JCFG, search=search, kary_k=kk)
    )
    assert [r["prefix_char_end"] for r in out] == [r["prefix_char_end"] for r in ref]
    if search == "linear":
        assert calls == 1 and len(engine.calls[0]) == sum(n for n, _ in cases)
    else:
        assert calls <= max(math.ceil(math.log(n + 1, kk + 1)) for n, _ in cases)


def test_generate_mode_unparseable_and_policy(tokenizer):
    def respond(ids, sp, i):
        r = reasoning_of(tokenizer, ids)
        if "Step 6" in r:
            return "Sure. [ENOUGH]", None
        return ("The prefix is fine I think" if "Step 3" in r else "[NOT_ENOUGH]"), None

    jcfg = dataclasses.replace(JCFG, verdict="generate")
    engine, out, _, _ = run_fake(tokenizer, rows_for([(10, 99)]), jcfg, respond)
    (r,) = out
    probes = r["probe_trace"]
    # the paper's mids: 5 (no tag → NOT_ENOUGH by policy), 8 (ENOUGH), 6 (ENOUGH) → keep 6 sentences
    assert [p["k"] for p in probes] == [5, 8, 6] and [p["verdict"] for p in probes] == [
        False,
        True,
        True,
    ]
    assert r["prefix_sentences"] == 6 and r["num_unparseable"] == 1 and not probes[0]["parseable"]
    assert all(p["raw"] for p in probes) and all(p["p_enough"] is None for p in probes)
    assert engine.calls and all(len(c) == 1 for c in engine.calls)
    # unparseable → ENOUGH under the other policy changes the cut
    _, out2, _, _ = run_fake(
        tokenizer,
        rows_for([(4, 99)]),
        dataclasses.replace(jcfg, unparseable="enough"),
        lambda ids, sp, i: ("no tag at all", None),
    )
    assert (
        out2[0]["prefix_sentences"] == 1
        and out2[0]["is_sufficient"]
        and out2[0]["num_unparseable"] == out2[0]["num_probes"]
    )
    _, out3, _, _ = run_fake(
        tokenizer, rows_for([(4, 99)]), jcfg, lambda ids, sp, i: ("no tag at all", None)
    )
    assert out3[0]["prefix_sentences"] == 4 and not out3[0]["is_sufficient"]


def test_engine_errors_are_retryable_quarantine_not_guessed_verdicts(tokenizer):
    """Issue 15.6: a failed engine call used to become NOT_ENOUGH verdicts (full-trace rows, stage done, never
    retried). Now the problems leave as `judge_engine_error`, a reason the stage never commits (it retries them)."""

    class Broken(FakeEngine):
        def generate(self, prompts, params):
            self.calls.append([tuple(p) for p in prompts])
            raise RuntimeError("engine died")

    builder, vt = judge_tools(tokenizer, JCFG)
    engine = Broken(lambda *a: ("", None), tokenizer)
    out, bad, calls = judge_rows(
        engine, builder, vt, rows_for([(8, 2), (5, 1)]), JCFG, ECFG, "fake", 0
    )
    assert out == [] and calls == len(engine.calls) == 1  # the search stops at the failed call
    assert {q["problem_id"]: q["reason"] for q in bad} == {
        "p0": "judge_engine_error",
        "p1": "judge_engine_error",
    }
    assert all("engine died" in q["detail"] for q in bad)
    from palign_ray.streaming import RETRYABLE_REASONS

    assert "judge_engine_error" in RETRYABLE_REASONS


def test_long_cot_is_cut_at_a_sentence_boundary_and_bad_rows_quarantined(tokenizer):
    rows = rows_for([(60, 50), (6, 2)])
    rows += [
        {"problem_id": "empty", "question": "Q?", "cot": "   \n ", "answer": None},
        {
            "problem_id": "huge-q",
            "question": "word " * 3000,
            "cot": "A short trace.",
            "answer": "1",
        },
    ]
    jcfg = dataclasses.replace(JCFG, max_cot_tokens=200)
    engine, out, bad, _ = run_fake(tokenizer, rows, jcfg)
    assert len(out) + len(bad) == len(rows)
    assert {q["problem_id"]: q["reason"] for q in bad} == {
        "empty": "empty_cot",
        "huge-q": "prompt_too_long",
    }
    long = next(r for r in out if r["problem_id"] == "p0")
    assert long["cot_truncated"] and long["num_judged_sentences"] < long["num_sentences"] == 60
    # the decisive sentence 50 lies beyond the judged part: nothing ENOUGH → the whole CoT is kept, flagged
    assert (
        not long["is_sufficient"]
        and long["prefix_sentences"] == 60
        and long["prefix"] == long["cot"].rstrip()
    )
    assert max(max(len(ids) for ids in call) for call in engine.calls) <= ECFG.max_model_len
    for call in engine.calls:
        for ids in call:
            assert reasoning_of(tokenizer, ids).rstrip().endswith(".")  # cut at sentence ends


def test_fixed_ratio_needs_no_engine():
    cfg = config_from_dict({"judge": {"search": "fixed_ratio", "fixed_ratio": 0.25}})
    out, bad, summary = truncate_rows(
        rows_for([(8, 1), (10, 1)]) + [{"problem_id": "x", "question": "", "cot": "a."}], cfg
    )
    assert [r["prefix_sentences"] for r in out] == [2, 3] and [q["reason"] for q in bad] == [
        "empty_question"
    ]
    assert all(r["num_probes"] == 0 and r["verdict_mode"] == "none" for r in out)
    assert summary["num_input"] == 3 and summary["num_output"] == 2 and summary["engine_calls"] == 0


def test_check_input_and_summary():
    ok, bad = check_input(
        [
            {"problem_id": "a", "question": "q", "cot": "c"},
            {"problem_id": "a", "question": "q", "cot": "c"},
            {"question": "q", "cot": None},
            {"problem_id": 7, "question": "q", "cot": "c", "answer": 7},
        ]
    )
    assert [r["problem_id"] for r in ok] == ["a", "7"] and ok[1]["answer"] == "7"
    assert [(q["problem_id"], q["reason"]) for q in bad] == [
        ("a", "duplicate_problem_id"),
        ("row-2", "empty_cot"),
    ]
    assert quantiles([1.0, 2.0, 3.0, 4.0])["p50"] == 2.5 and quantiles([]) == {}
    s = summarize([], bad, 4, 1.0, JCFG, paper_reference=False, engine_calls=0, judge_s=0.0)
    assert s["num_quarantined"] == 2 and s["quarantine_reasons"] == {
        "duplicate_problem_id": 1,
        "empty_cot": 1,
    }


def test_config_checks():
    from palign_ray.judge.contract import check_judge_config

    check_judge_config(JudgeConfig(calibration="relative"))
    with pytest.raises(ValueError, match="verdict=logprob"):
        check_judge_config(JudgeConfig(calibration="contextual", verdict="generate"))
    with pytest.raises(ValueError, match="temperature"):
        check_judge_config(JudgeConfig(votes=3))


def test_cli_reads_the_authors_released_format(tmp_path, shared_data):
    """Authors' generations as traces: list field + index, instruction stripped, draft markers removed (no model)."""
    from palign_ray.cli import main

    src = os.path.join(shared_data, "palign-results", "aime24-output.jsonl")
    out = tmp_path / "prefixes.parquet"
    rc = main(
        [
            "truncate",
            "--input",
            src,
            "--output",
            str(out),
            "--question-field",
            "prompt_ori",
            "--cot-field",
            "output",
            "--cot-index",
            "0,1",
            "--strip-prompt-prefix",
            "Please reason step by step, and put your final answer within \\boxed{}.",
            "--limit",
            "6",
            "judge.search=fixed_ratio",
        ]
    )
    assert rc == 0
    import pyarrow.parquet as pq

    rows = pq.read_table(out).to_pylist()
    assert [r["problem_id"] for r in rows] == sorted(["0-0", "0-1", "1-0", "1-1", "2-0", "2-1"])
    assert pq.read_table(out).schema.names == list(OUTPUT_COLUMNS)
    for r in rows:
        assert "<Begin_of_Draft>" not in r["cot"] and "<End_of_Draft>" not in r["cot"]
        assert (
            not r["question"].startswith("Please reason")
            and r["prefix"] == r["cot"][: r["prefix_char_end"]]
        )
    summary = json.loads((tmp_path / "prefixes.summary.json").read_text())
    assert summary["num_output"] == 6 and (tmp_path / "prefixes.quarantine.parquet").is_file()
    # issue 27: --limit 6 reported 40 in, 6 out, 0 quarantined; the traces it left are counted now
    assert (
        summary["num_skipped_by_limit"]
        == 2 * summary["num_input_rows"] - 6 - summary["num_read_rejected"]
    )


# ---- real: Ray Data actor pool + vLLM ----------------------------------------------------------


def real_cfg(model: str, **judge) -> Config:
    return Config(
        run=RunConfig(seed=0),
        engine=EngineConfig(max_model_len=1024, max_num_seqs=32),
        ray=RayConfig(num_cpus=4, num_actors=1, num_cpus_per_actor=0.5, batch_size=8),
        # the audit has its own tests (tests/test_judge_audit.py); these measure the search only
        judge=JudgeConfig(model=model, **{"audit_problems": 0, **judge}),
    )


def assert_real_run(rows, out, bad, summary):
    assert len(out) + len(bad) == len(rows) and summary["num_input"] == len(rows)
    for r in out:
        assert set(r) == set(OUTPUT_COLUMNS)
        assert r["num_probes"] <= math.ceil(math.log2(r["num_judged_sentences"] + 1))
        assert (
            r["prefix"] == r["cot"][: r["prefix_char_end"]]
            and 1 <= r["prefix_sentences"] <= r["num_sentences"]
        )
        assert all(p["p_enough"] is not None and 0 <= p["p_enough"] <= 1 for p in r["probe_trace"])
        assert all(p["generated_tokens"] == 1 for p in r["probe_trace"])
    later = [p for r in out for p in r["probe_trace"] if p["round"] > 1]
    assert later and all(p["cached_tokens"] > 0 for p in later), "prefix cache hits after round 1"
    assert summary["engine_calls"] == max(
        r["num_rounds"] for r in out
    )  # one batch: one engine call per round


@pytest.mark.timeout(600)
def test_ray_actor_pool_tiny_model(ray_session, tiny_model):
    rows = rows_for([(12, 5), (30, 3), (7, 7), (20, 1), (16, 9), (5, 2), (25, 12), (9, 9)])
    rows.append({"problem_id": "blank", "question": "Q?", "cot": " ", "answer": "1"})
    cfg = real_cfg(tiny_model)
    out, bad, summary = truncate_rows(rows, cfg)
    assert [q["reason"] for q in bad] == ["empty_cot"]
    assert_real_run(rows, out, bad, summary)
    assert summary["cache_hit_share"] > 0.3


@pytest.mark.timeout(600)  # ~50 s here (36 s call + 11 s setup), so not marked slow
def test_ray_actor_pool_smollm2(ray_session, default_model, shared_data):
    path = os.path.join(shared_data, "palign-results", "aime25-output.jsonl")
    src = [json.loads(line) for line in open(path)][:8]
    rows = [
        {
            "problem_id": str(i),
            "question": r["prompt_ori"],
            "cot": r["output"][0].replace("<Begin_of_Draft>", ""),
            "answer": str(r["answer"]),
        }
        for i, r in enumerate(src)
    ]
    cfg = real_cfg(default_model, max_cot_tokens=600)
    t = time.perf_counter()
    out, bad, summary = truncate_rows(rows, cfg)
    assert not bad and all(r["cot_truncated"] for r in out)
    assert_real_run(rows, out, bad, summary)
    assert time.perf_counter() - t < 600


@pytest.mark.timeout(600)
def test_paper_reference_mode_tiny_model(ray_session, tiny_model):
    rows = rows_for([(6, 2), (9, 4)])
    cfg = dataclasses.replace(
        real_cfg(tiny_model, paper_reference=True, max_new_tokens=4), ray=RayConfig(num_cpus=4)
    )
    out, bad, summary = truncate_rows(rows, cfg)
    assert not bad and len(out) == 2 and summary["paper_reference"]
    assert (
        summary["engine_calls"] == summary["num_probes"] == sum(r["num_probes"] for r in out)
    )  # one probe per call
    for r in out:
        assert r["verdict_mode"] == "generate" and r["search"] == "binary"
        assert all(
            p["p_enough"] is None and 1 <= p["generated_tokens"] <= 4 for p in r["probe_trace"]
        )
        assert r["num_unparseable"] == r["num_probes"]  # a random tiny model never writes a tag
