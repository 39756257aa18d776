"""Calibrated verdicts: the math, the anchor probes in round 1 (scripted engine), and a real relative run."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import pytest

from palign_ray.config import EngineConfig, JudgeConfig, load_config
from palign_ray.judge.calibration import (
    Calibrator,
    anchor_ks,
    contradictions,
    degeneracy,
    isotonic_cut,
    pav,
)
from palign_ray.judge.contract import OUTPUT_COLUMNS
from palign_ray.judge.probes import judge_tools
from palign_ray.judge.rounds import judge_rows
from palign_ray.judge.summary import summarize
from tests.judge_helpers import MARK, reasoning_of, rows_for

REPO = Path(__file__).resolve().parents[1]
# The self-judge default.yaml used before 2026-12-06 (the rollout variant replaced it there).
SELF_JUDGE = [
    "judge.verdict=logprob",
    "judge.calibration=contextual",
    "judge.contextual_threshold=-0.1",
]
ECFG = EngineConfig(max_model_len=2048)

# ---- pure math --------------------------------------------------------------------------------------


def test_calibrator_scores_and_flat_denominator():
    rel = Calibrator("relative", 0.5, m0=1.0, mn=3.0)
    assert rel.score(0.9, 1.0) == 0.0 and rel.score(0.9, 3.0) == 1.0 and rel.score(0.9, 2.0) == 0.5
    assert rel.verdict(rel.score(0.9, 2.0)) and not rel.verdict(rel.score(0.9, 1.9))
    assert rel.score(0.9, 5.0) == 2.0  # beyond the full trace is allowed (and ENOUGH)
    for m0, mn in (
        (1.0, 1.05),
        (2.0, 1.0),
        (None, 1.0),
    ):  # cannot tell full from empty: no score, NOT_ENOUGH
        flat = Calibrator("relative", 0.5, m0=m0, mn=mn, min_range=0.1)
        assert flat.flat and flat.score(0.9, 10.0) is None and not flat.verdict(None)
    ctx = Calibrator("contextual", 0.0, m0=2.0)
    assert ctx.score(0.2, 2.5) == 0.5 and ctx.verdict(0.5) and not ctx.verdict(ctx.score(0.99, 1.5))
    ab = Calibrator("absolute", 0.5)
    assert ab.score(0.7, -3.0) == 0.7 and ab.verdict(0.7) and not ab.verdict(0.3)
    assert (
        anchor_ks("absolute", 9) == ()
        and anchor_ks("contextual", 9) == (0,)
        and anchor_ks("relative", 9) == (0, 9)
    )


def test_pav_and_isotonic_cut_on_known_inputs():
    assert pav([1, 3, 2, 4]) == [1, 2.5, 2.5, 4]
    assert pav([3, 2, 1]) == [2, 2, 2]
    assert pav([0, 1, 2]) == [0, 1, 2] and pav([]) == []
    assert pav([1, 0], weights=[3, 1]) == [0.75, 0.75]
    fitted = pav([0.0, 0.6, 0.2, 0.4, 1.0])
    assert all(a <= b for a, b in zip(fitted, fitted[1:], strict=False)) and fitted[
        1
    ] == pytest.approx(0.4)
    # a lone noisy spike at k=1 is pooled away: the cut moves to k=4 (fit 0.4,0.4,0.4,0.7,1)
    pts = [(0, 0.0), (1, 0.6), (2, 0.2), (3, 0.4), (4, 0.7), (5, 1.0)]
    assert isotonic_cut(pts, 0.5) == 4
    assert (
        isotonic_cut([(0, 0.9), (1, 0.1)], 0.5) == 1
    )  # the anchor is never chosen; fit 0.5,0.5 → k=1
    assert isotonic_cut([(0, 0.9), (1, 0.1)], 0.6) is None
    assert contradictions([(1, True), (2, False), (3, True), (4, False)]) == 3
    assert contradictions([(1, False), (2, True), (3, True)]) == 0


def test_degeneracy_reasons():
    assert degeneracy(0.5, 100, [0.5] * 10, 0.1, 0.1) == []
    assert len(degeneracy(0.99, 100, [0.1] * 10, 0.9, 0.0)) == 2
    assert "full trace" in degeneracy(0.5, 100, [1.0] * 10, 0.0, 0.9)[0]
    assert degeneracy(1.0, 10, [], 0.0, 0.0) == []  # too few probes to say


# ---- scripted engine -----------------------------------------------------------------------------------


def biased_judge(tokenizer, lift: float = 1.0):
    """Like SmolLM2: p(EN) ≫ p(NOT) always (absolute says ENOUGH everywhere); the margin rises by `lift` once
    the decisive sentence (containing KEY) is in the prefix."""
    from palign_ray.judge.prompts import verdict_tokens

    vt = verdict_tokens(tokenizer)

    def respond(ids, sp, i):
        r = reasoning_of(tokenizer, ids)
        m = 2.3 + (lift if MARK in r else 0.0) + 0.0001 * len(r)  # a small drift with length
        return "EN", {vt.enough_id: math.log(0.2), vt.not_enough_id: math.log(0.2) - m}

    return respond


def run(tokenizer, rows, jcfg, respond):
    from palign_ray.engines.fake import FakeEngine

    builder, vt = judge_tools(tokenizer, jcfg)
    engine = FakeEngine(respond, tokenizer)
    out, bad, calls = judge_rows(engine, builder, vt, rows, jcfg, ECFG, "fake", seed=0)
    return engine, out, bad, calls


CASES = [(12, 5), (7, 1), (20, 20), (9, 4), (1, 1), (6, 3)]


def test_relative_anchors_ride_round_one_and_verdicts_follow_normalised_scores(tokenizer):
    rows = rows_for(CASES)
    _, absolute, _, _ = run(tokenizer, rows, JudgeConfig(), biased_judge(tokenizer))
    assert all(r["prefix_sentences"] == 1 for r in absolute)  # the degenerate baseline
    jcfg = JudgeConfig(calibration="relative", threshold=0.5)
    engine, out, bad, calls = run(tokenizer, rows, jcfg, biased_judge(tokenizer))
    assert not bad and len(out) == len(CASES) and calls == len(engine.calls)
    first = [reasoning_of(tokenizer, ids) for ids in engine.calls[0]]
    assert first.count("") == len(CASES), "one empty-prefix anchor per problem in the first call"
    for i, (n, t) in enumerate(CASES):
        r = next(x for x in out if x["problem_id"] == f"p{i}")
        assert (
            set(r) == set(OUTPUT_COLUMNS)
            and r["calibration"] == "relative"
            and not r["calibration_status"]
        )
        assert r["prefix_sentences"] == t and r["is_sufficient"]
        anchors = [p for p in r["probe_trace"] if p["anchor"]]
        assert [(p["k"], p["round"]) for p in anchors] == [(0, 1), (n, 1)] and r[
            "num_calibration_probes"
        ] == 2
        m0, mn = (a["logprob_enough"] - a["logprob_not_enough"] for a in anchors)
        assert r["calibration_m0"] == pytest.approx(m0) and r["calibration_mn"] == pytest.approx(mn)
        search = [p for p in r["probe_trace"] if not p["anchor"]]
        assert len(search) == r["num_probes"] <= n.bit_length()
        for p in search:
            s = (p["logprob_enough"] - p["logprob_not_enough"] - m0) / (mn - m0)
            assert (
                p["score"] == pytest.approx(s)
                and p["verdict"] == (s >= 0.5)
                and p["p_enough"] > 0.5
            )
        assert r["prompt_tokens"] == sum(p["prompt_tokens"] for p in r["probe_trace"])
    # the full trace is judged once per problem, even when the search asks for it (n=1, or the k=n probe)
    sent = [ids for call in engine.calls for ids in call]
    assert len(sent) == len(set(sent))
    s = summarize(
        out, [], len(rows), 1.0, jcfg, paper_reference=False, engine_calls=calls, judge_s=0.0
    )
    assert s["num_calibration_probes"] == 2 * len(CASES) and s["num_probes"] == sum(
        r["num_probes"] for r in out
    )
    assert set(s["enough_share_by_round"]) == {
        str(k) for k in range(1, max(r["num_rounds"] for r in out) + 1)
    }


def test_flat_judge_keeps_full_trace_and_stops(tokenizer):
    jcfg = JudgeConfig(calibration="relative", min_margin_range=0.5)
    engine, out, _, calls = run(
        tokenizer, rows_for([(12, 99), (8, 3)]), jcfg, biased_judge(tokenizer, lift=0.0)
    )
    assert calls == 1, "an uncalibratable judge stops after round 1"
    for r in out:
        assert r["calibration_status"] == "flat_margin" and not r["is_sufficient"]
        assert r["prefix_sentences"] == r["num_sentences"]
        assert all(
            p["score"] is None and not p["verdict"] for p in r["probe_trace"] if not p["anchor"]
        )
    s = summarize(out, [], 2, 1.0, jcfg, paper_reference=False, engine_calls=calls, judge_s=0.0)
    assert s["calibration_status"] == {"flat_margin": 2}
    _, out2, _, _ = run(
        tokenizer,
        rows_for([(12, 99)]),
        dataclasses.replace(jcfg, flat_fallback="fixed_ratio", fixed_ratio=0.25),
        biased_judge(tokenizer, lift=0.0),
    )
    assert (
        out2[0]["prefix_sentences"] == 3
        and not out2[0]["is_sufficient"]
        and out2[0]["calibration_status"] == "flat_margin"
    )


def test_contextual_uses_one_anchor_and_a_margin_threshold(tokenizer):
    jcfg = JudgeConfig(calibration="contextual", contextual_threshold=0.5)
    engine, out, _, _ = run(tokenizer, rows_for(CASES), jcfg, biased_judge(tokenizer))
    assert [reasoning_of(tokenizer, ids) for ids in engine.calls[0]].count("") == len(CASES)
    for i, (_, t) in enumerate(CASES):
        r = next(x for x in out if x["problem_id"] == f"p{i}")
        assert (
            r["prefix_sentences"] == t
            and r["num_calibration_probes"] == 1
            and math.isnan(r["calibration_mn"])
        )
        assert r["threshold"] == 0.5
    with pytest.raises(ValueError, match="votes=1"):
        from palign_ray.judge.contract import check_judge_config

        check_judge_config(JudgeConfig(calibration="relative", votes=3, temperature=0.7))


def test_isotonic_linear_counts_contradictions_and_smooths(tokenizer):
    """A noisy judge: a spurious high margin at sentence 2 of a 10-sentence trace whose KEY is sentence 6."""
    from palign_ray.judge.prompts import verdict_tokens

    vt = verdict_tokens(tokenizer)

    def respond(ids, sp, i):
        r = reasoning_of(tokenizer, ids)
        k = r.count("Step ")
        m = 1.0 + (2.0 if MARK in r else 0.0) + (1.9 if k == 2 else 0.0)
        return "EN", {vt.enough_id: -1.0, vt.not_enough_id: -1.0 - m}

    rows = rows_for([(10, 6)])
    plain = JudgeConfig(calibration="relative", threshold=0.8, search="linear")
    _, (raw,), _, _ = run(tokenizer, rows, plain, respond)
    assert (
        raw["prefix_sentences"] == 2 and raw["num_contradictions"] == 3 and raw["non_monotone"]
    )  # 2 vs 3,4,5
    _, (iso,), _, _ = run(tokenizer, rows, dataclasses.replace(plain, isotonic=True), respond)
    assert (
        iso["prefix_sentences"] == 6
        and iso["is_sufficient"]
        and iso["isotonic"]
        and iso["num_contradictions"] == 3
    )


def test_default_config_judges_the_embedded_model_by_rollouts():
    # the one judge the audit found valid on the default run (bench/results/2026-12-06-default-judge-design.md)
    cfg = load_config(REPO / "jobs" / "configs" / "default.yaml")
    assert cfg.judge.model == "default" and cfg.judge.verdict == "rollout"
    assert (cfg.judge.rollout_samples, cfg.judge.rollout_min_correct) == (2, 1)
    assert cfg.judge.calibration == "absolute" and cfg.judge.votes == 1
    assert (
        JudgeConfig().verdict == "logprob"
    )  # the paper's judge stays the default for real students


# ---- real: SmolLM2 through Ray Data + vLLM -------------------------------------------------------------


def assert_real_audit(out, summary, num_audited: int, samples: int) -> None:
    """The audit of a real run: the sampled rows carry consistent counts and every rollout's text and grade."""
    audited = [r for r in out if r["audit"]]
    assert len(audited) == min(num_audited, len(out))
    for r in audited:
        a, rollouts = r["audit"], r["audit_rollouts"]
        assert len(rollouts) == 4 * samples and all(x["text"] for x in rollouts)
        assert a["k_cut"] == r["prefix_sentences"] and a["k_shorter"] == r["prefix_sentences"] - 1
        assert a["k_full"] == r["num_judged_sentences"] and a["k_empty"] == 0
        for arm in ("cut", "shorter", "full", "empty"):
            assert a[f"correct_{arm}"] == sum(x["correct"] for x in rollouts if x["arm"] == arm)
        assert a["generated_tokens"] == sum(x["tokens"] for x in rollouts) > 0
    m = summary["judge_audit"]
    assert m["audit"]["num_problems"] == len(audited)
    assert summary["audit_generated_tokens"] == sum(r["audit"]["generated_tokens"] for r in audited)
    # every built-in reference trace knows its decisive sentence, and the trivial cuts sit beside the judge's
    assert m["known_cut"]["num_problems"] == len(out)
    assert set(m["known_cut"]["cuts"]) >= {"judge", "always_full", "always_first"}
    assert m["known_cut"]["cuts"]["always_full"]["late"]["value"] == sum(
        r["known_cut"] < r["num_sentences"] for r in out
    ) / len(out)
    assert m["validity"]["status"] in ("valid", "invalid")


def builtin_rows(n: int):
    from palign_ray.builtin import builtin_problems

    probs = builtin_problems(n, 0)
    rows = [
        {
            "problem_id": p["problem_id"],
            "question": p["question"],
            "cot": p["solution"],
            "answer": p["answer"],
            "decisive_sentence": p["decisive_sentence"],
            "decisive_char_end": p["decisive_char_end"],
        }
        for p in probs
    ]
    return rows, {p["problem_id"]: p["decisive_sentence"] for p in probs}


@pytest.mark.timeout(600)
def test_relative_smollm2_truncate_rows(ray_session, default_model):
    from palign_ray.config import Config, EngineConfig, RayConfig, RunConfig
    from palign_ray.judge.stage import truncate_rows

    rows, _ = builtin_rows(8)
    rows.append({"problem_id": "blank", "question": "Q?", "cot": "  ", "answer": "1"})
    cfg = Config(
        run=RunConfig(seed=0),
        engine=EngineConfig(max_model_len=1024, max_num_seqs=32),
        ray=RayConfig(num_cpus=4, num_actors=1, num_cpus_per_actor=0.5, batch_size=16),
        judge=JudgeConfig(
            model=default_model, calibration="relative", threshold=0.3, audit_problems=0
        ),
    )
    t = time.perf_counter()
    out, bad, summary = truncate_rows(rows, cfg)
    assert len(out) + len(bad) == len(rows) and [q["reason"] for q in bad] == ["empty_cot"]
    # anchors ride round 1; a round that only asks for the already-judged full trace needs no call
    assert summary["engine_calls"] >= 1 and summary["engine_calls"] <= max(
        r["num_rounds"] for r in out
    )
    for r in out:
        assert (
            r["calibration"] == "relative"
            and math.isfinite(r["calibration_m0"])
            and math.isfinite(r["calibration_mn"])
        )
        anchors = [p for p in r["probe_trace"] if p["anchor"]]
        assert [p["k"] for p in anchors] == [0, r["num_judged_sentences"]] and all(
            p["round"] == 1 for p in anchors
        )
        assert anchors[0]["prompt_tokens"] < anchors[1]["prompt_tokens"]
        search = [p for p in r["probe_trace"] if not p["anchor"]]
        assert len(search) == r["num_probes"] <= r["num_judged_sentences"].bit_length()
        if not r["calibration_status"]:
            assert all(p["verdict"] == (p["score"] >= 0.3) for p in search)
    assert summary["num_calibration_probes"] == 2 * len(out)
    assert time.perf_counter() - t < 600


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_contextual_calibration_cuts_are_non_degenerate_on_builtin(ray_session, default_model):
    """SmolLM2 judging in words, contextual (-0.1), on 16 built-in solutions: neither almost all sentence 1 nor almost all full."""
    from palign_ray.judge.stage import truncate_rows

    cfg = load_config(
        REPO / "jobs" / "configs" / "default.yaml",
        # an audit of 4 problems with short continuations: the real SmolLM2 audit, at test cost
        ["ray.num_cpus=4", "ray.num_actors=1", "judge.audit_problems=4", "align.max_tokens=64"]
        + SELF_JUDGE,
    )
    rows, decisive = builtin_rows(16)
    out, bad, summary = truncate_rows(rows, cfg)
    assert not bad and len(out) == 16
    assert_real_audit(out, summary, cfg.judge.audit_problems, cfg.judge.audit_samples)
    assert (
        summary["share_cut_at_first_sentence"] <= 0.8 and summary["share_cut_at_full_trace"] <= 0.8
    )
    assert 0.05 <= summary["enough_share"] <= 0.95 and not summary["degenerate"]
    assert sum(r["prefix_sentences"] >= decisive[r["problem_id"]] + 1 for r in out) >= 8
