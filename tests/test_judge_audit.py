"""The judge audit's rollouts: a scripted student (pure logic) and the tiny random model through Ray Data + vLLM."""

from __future__ import annotations

import asyncio

import pytest

from palign_ray.config import AlignConfig, Config, EngineConfig, JudgeConfig, RayConfig, RunConfig
from palign_ray.engines.fake import FakeEngine
from palign_ray.judge.audit import Auditor, audit_off_reason
from palign_ray.judge.problem import sentence_ends
from tests.judge_helpers import MARK, rows_for


def _student(tokenizer):
    """Solves (boxes the gold) exactly when the prompt's prefix holds the decisive sentence."""

    def respond(ids, params, i):
        text = tokenizer.decode(list(ids))
        gold = text.split("What is ", 1)[1].split("?", 1)[0].split(" + ")
        return (
            f"So \\boxed{{{2 * int(gold[0])}}}." if MARK in text else "I do not know.",
            None,
        )

    return respond


def test_audit_counts_follow_the_decisive_sentence(tokenizer):
    """Cut at the decisive sentence: sufficient and minimal; the full trace solves, the empty prefix does not."""
    cfg = Config(
        run=RunConfig(seed=0),
        judge=JudgeConfig(audit_samples=3),
        align=AlignConfig(grader="boxed", max_tokens=16),
    )
    rows = rows_for([(8, 3), (6, 1), (5, 5)])
    out = []
    for r in rows:
        ends = sentence_ends(r["cot"], "robust", 400)
        k = next(i + 1 for i in range(len(ends)) if MARK in r["cot"][: ends[i]])
        out.append({**r, "prefix_sentences": k, "num_judged_sentences": len(ends), "ends": ends})
    engine = FakeEngine(_student(tokenizer), tokenizer)
    auditor = Auditor(cfg, engine, EngineConfig(max_model_len=2048))
    asyncio.run(auditor.audit(out, {r["problem_id"]: r["ends"] for r in out}))
    for r in out:
        a = r["audit"]
        assert (a["correct_cut"], a["correct_shorter"], a["correct_full"], a["correct_empty"]) == (
            3,
            0,
            3,
            0,
        )
        assert a["k_cut"] == r["prefix_sentences"] and a["k_full"] == r["num_judged_sentences"]
        assert len(r["audit_rollouts"]) == 12 and a["generated_tokens"] > 0
        wrong = [x for x in r["audit_rollouts"] if not x["correct"]]
        assert {x["arm"] for x in wrong} == {"shorter", "empty"}
        assert all(x["reason"] == "no_boxed_answer" and x["text"] for x in wrong)
    # one engine call per arm (bounded sequences in flight), each with every audited problem of the part
    assert [len(c) for c in engine.calls] == [3, 3, 3, 3]


def test_audit_is_off_with_a_stated_reason():
    assert audit_off_reason(Config()) == ""
    assert audit_off_reason(Config(judge=JudgeConfig(audit_problems=0))) == "judge.audit_problems=0"
    assert "not the student" in audit_off_reason(Config(judge=JudgeConfig(model="/x")))
    assert "fixed_ratio" in audit_off_reason(Config(judge=JudgeConfig(search="fixed_ratio")))


@pytest.mark.timeout(600)
def test_truncate_audits_the_seeded_sample_tiny_model(ray_session, tiny_model):
    """The real stage: 2 of 4 problems audited on the judge's engine, rollouts and counts in their rows."""
    from palign_ray.judge.stage import truncate_rows

    cfg = Config(
        run=RunConfig(seed=0),
        engine=EngineConfig(max_model_len=1024, max_num_seqs=32),
        ray=RayConfig(num_cpus=4, num_actors=1, num_cpus_per_actor=0.5, batch_size=8),
        judge=JudgeConfig(model=tiny_model, audit_problems=2, audit_samples=2),
        align=AlignConfig(model=tiny_model, max_tokens=8),
    )
    rows = rows_for([(6, 2), (9, 4), (5, 5), (7, 1)])
    out, bad, summary = truncate_rows(rows, cfg)
    assert not bad and len(out) == 4
    audited = [r for r in out if r["audit"]]
    assert len(audited) == 2 and all(r["audit_rollouts"] is None for r in out if not r["audit"])
    for r in audited:
        assert len(r["audit_rollouts"]) == 8
        assert {x["arm"] for x in r["audit_rollouts"]} == {"cut", "shorter", "full", "empty"}
        assert all(1 <= x["tokens"] <= 8 for x in r["audit_rollouts"])
    m = summary["judge_audit"]
    assert m["audit"]["num_problems"] == 2 and m["audit"]["samples"] == 2
    assert summary["audit_problems"] == 2 and summary["audit_generated_tokens"] > 0
    # the tiny random model never reaches an answer: the cut cannot be told from the empty prefix
    assert m["audit"]["cut"]["value"] == m["audit"]["empty"]["value"] == 0.0
    assert m["validity"]["status"] == "invalid"
