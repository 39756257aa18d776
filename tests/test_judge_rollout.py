"""judge.verdict=rollout: the search on the student's own continuations, and align reusing them."""

from __future__ import annotations

import asyncio

import pytest

from palign_ray.config import AlignConfig, Config, EngineConfig, JudgeConfig, RunConfig
from palign_ray.engines.fake import FakeEngine
from palign_ray.judge.contract import check_judge_config
from palign_ray.judge.probes import judge_tools
from palign_ray.judge.rollout import RolloutProber, check_rollout_config
from palign_ray.judge.rounds import judge_rows
from tests.judge_helpers import MARK, rows_for

ECFG = EngineConfig(max_model_len=2048)


def student(tokenizer, solves_from_mark=(True,)):
    """Continuations box the gold answer when the prefix holds the decisive sentence (per sample index)."""

    def respond(ids, params, i):
        text = tokenizer.decode(list(ids))
        prefix = text.split("*Prefix*:", 1)[1]
        x = int(text.split("What is ", 1)[1].split(" + ", 1)[0])
        ok = MARK in prefix and solves_from_mark[i % len(solves_from_mark)]
        return (f"Thus \\boxed{{{2 * x}}}." if ok else "Thus \\boxed{-1}."), None

    return respond


def cfg_of(**judge) -> Config:
    return Config(
        run=RunConfig(seed=0),
        judge=JudgeConfig(verdict="rollout", audit_problems=0, **judge),
        align=AlignConfig(grader="boxed", max_tokens=16, num_samples=2),
    )


def judge(tokenizer, rows, cfg, respond):
    builder, vt = judge_tools(tokenizer, cfg.judge)
    engine = FakeEngine(respond, tokenizer)
    prober = RolloutProber(cfg, tokenizer)
    out, bad, calls = judge_rows(engine, builder, vt, rows, cfg.judge, ECFG, "fake", 0, prober)
    return engine, out, bad


def test_rollout_search_cuts_at_the_first_prefix_the_student_solves_from(tokenizer):
    cases = [(12, 5), (7, 1), (9, 9), (6, 8)]  # the last has no decisive sentence: never solved
    cfg = cfg_of(rollout_samples=3)
    engine, out, bad = judge(tokenizer, rows_for(cases), cfg, student(tokenizer))
    assert not bad
    by_id = {r["problem_id"]: r for r in out}
    for i, (n, t) in enumerate(cases):
        r = by_id[f"p{i}"]
        assert r["verdict_mode"] == "rollout"
        assert r["prefix_sentences"] == (t if t <= n else n) and r["is_sufficient"] == (t <= n)
        search = r["probe_trace"]
        assert all(len(p["votes"]) == 3 and p["score"] in (0.0, 1.0) for p in search)
        if t <= n:  # the cut's own continuations are kept, all correct here
            assert r["rollout_k"] == t and len(r["rollout_continuations"]) == 3
            assert all(c["correct"] and c["k"] == t for c in r["rollout_continuations"])
        else:  # the whole-trace fallback was never judged sufficient: nothing to reuse
            assert r["rollout_k"] == -1 and r["rollout_continuations"] is None
    # continuations are sampled with align's settings, n = rollout_samples, seeded per problem and k
    assert len(engine.calls) == max(r["num_rounds"] for r in out)


def test_rollout_min_correct_decides_with_noisy_students(tokenizer):
    rows = rows_for([(10, 4)])
    # from the decisive sentence on, 1 of 3 samples is right
    noisy = student(tokenizer, (True, False, False))
    _, one, _ = judge(tokenizer, rows, cfg_of(rollout_samples=3, rollout_min_correct=1), noisy)
    _, two, _ = judge(tokenizer, rows, cfg_of(rollout_samples=3, rollout_min_correct=2), noisy)
    assert one[0]["prefix_sentences"] == 4 and one[0]["is_sufficient"]
    assert any(p["score"] == pytest.approx(1 / 3) for p in one[0]["probe_trace"])
    assert not two[0]["is_sufficient"] and two[0]["prefix_sentences"] == 10


def test_rollout_settings_are_checked():
    check_rollout_config(cfg_of())
    with pytest.raises(ValueError, match="rollout_min_correct"):
        check_rollout_config(cfg_of(rollout_samples=2, rollout_min_correct=3))
    with pytest.raises(ValueError, match="align.model"):
        check_rollout_config(cfg_of(model="/other"))
    with pytest.raises(ValueError, match="votes=1"):
        check_judge_config(JudgeConfig(verdict="rollout", votes=3, temperature=0.7))
    with pytest.raises(ValueError, match="verdict=logprob"):
        check_judge_config(JudgeConfig(verdict="rollout", calibration="contextual"))


def _align_worker(tokenizer, num_samples, respond):
    from palign_ray.align import AlignWorker

    cfg = Config(
        run=RunConfig(seed=0),
        align=AlignConfig(grader="boxed", max_tokens=16, num_samples=num_samples),
    )
    w = AlignWorker(cfg)
    engine = FakeEngine(respond, tokenizer)
    w.gen.engine = engine  # a started engine: no vLLM in this unit test
    return w, engine


def _kept_row(tokenizer, kept_texts, k=2):
    (row,) = rows_for([(4, 1)])
    return {
        **row,
        "prefix": row["cot"].split(". ")[0] + ".",
        "prefix_sentences": k,
        "num_sentences": 4,
        "rollout_k": k,
        "rollout_continuations": [
            {
                "arm": "search",
                "k": k,
                "sample_index": i,
                "correct": True,
                "reason": "correct",
                "tokens": 3,
                "finish_reason": "stop",
                "text": t,
            }
            for i, t in enumerate(kept_texts)
        ],
    }


def test_align_reuses_the_judges_continuations_and_generates_only_the_rest(tokenizer):
    never = lambda ids, sp, i: ("Thus \\boxed{-1}.", None)  # noqa: E731
    kept = ["Thus \\boxed{0}.", "So \\boxed{0}."]  # p0's gold is 0
    w, engine = _align_worker(tokenizer, 3, never)
    out, quar, summary = asyncio.run(w.process([_kept_row(tokenizer, kept)]))
    # the 2 kept are graded again and accepted as samples 0 and 1; 1 more was generated (and is wrong)
    assert [(r["sample_index"], r["continuation"]) for r in out] == list(enumerate(kept))
    assert [q["sample_index"] for q in quar] == [2]
    assert len(engine.calls) == 1 and len(engine.calls[0]) == 1
    assert summary["num_reused_continuations"] == 2 and summary["generated_tokens"] > 0
    # fewer samples asked than kept: no engine call at all
    w, engine = _align_worker(tokenizer, 1, never)
    out, quar, summary = asyncio.run(w.process([_kept_row(tokenizer, kept)]))
    assert len(out) == 1 and not quar and not engine.calls
    # kept from another cut than the row's: not reused
    stale = {**_kept_row(tokenizer, kept), "rollout_k": 3}
    w, engine = _align_worker(tokenizer, 2, never)
    out, quar, summary = asyncio.run(w.process([stale]))
    assert not out and len(quar) == 2 and summary["num_reused_continuations"] == 0


@pytest.mark.timeout(600)
def test_rollout_judge_tiny_model_through_ray(ray_session, tiny_model):
    """The real stage with rollout verdicts: probes are continuations on the judge's engine, graded."""
    from palign_ray.config import RayConfig
    from palign_ray.judge.stage import truncate_rows

    cfg = Config(
        run=RunConfig(seed=0),
        engine=EngineConfig(max_model_len=1024, max_num_seqs=32),
        ray=RayConfig(num_cpus=4, num_actors=1, num_cpus_per_actor=0.5, batch_size=8),
        judge=JudgeConfig(model=tiny_model, verdict="rollout", rollout_samples=2, audit_problems=0),
        align=AlignConfig(model=tiny_model, max_tokens=8),
    )
    out, bad, summary = truncate_rows(rows_for([(6, 2), (9, 4)]), cfg)
    assert not bad and len(out) == 2 and summary["verdict_mode"] == "rollout"
    for r in out:
        probes = r["probe_trace"]
        assert probes and all(
            len(p["votes"]) == 2 and 1 <= p["generated_tokens"] <= 16 for p in probes
        )
        # a random tiny model never reaches the answer: nothing sufficient, nothing kept, whole trace
        assert not r["is_sufficient"] and r["prefix_sentences"] == r["num_sentences"]
        assert r["rollout_k"] == -1 and r["rollout_continuations"] is None


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_rollout_judge_smollm2_keeps_the_cuts_continuations(ray_session, default_model):
    """SmolLM2 judging by its own continuations on 3 built-in traces (default.yaml otherwise)."""
    from pathlib import Path

    from palign_ray.config import load_config
    from palign_ray.judge.stage import truncate_rows
    from tests.test_judge_calibration import builtin_rows

    cfg = load_config(
        Path(__file__).parents[1] / "jobs" / "configs" / "default.yaml",
        [
            "ray.num_cpus=4",
            "judge.verdict=rollout",
            "judge.calibration=absolute",
            "judge.rollout_samples=2",
            "judge.audit_problems=3",
            "judge.audit_samples=1",
            "align.max_tokens=128",
        ],
    )
    rows, _ = builtin_rows(3)
    out, bad, summary = truncate_rows(rows, cfg)
    assert not bad and len(out) == 3
    for r in out:
        assert all(len(p["votes"]) == 2 for p in r["probe_trace"])
        kept = r["rollout_continuations"]
        if r["is_sufficient"]:  # the final cut was probed sufficient: its continuations are kept
            assert r["rollout_k"] == r["prefix_sentences"] and len(kept) == 2
            assert sum(c["correct"] for c in kept) >= cfg.judge.rollout_min_correct
        else:
            assert kept is None and r["prefix_sentences"] == r["num_sentences"]
    assert summary["judge_audit"]["audit"]["num_problems"] == 3
    assert summary["generated_tokens"] > 0  # the rollout judge's own cost, reported
