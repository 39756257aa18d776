"""The judge's measures (pure): AUC, audit rates with CIs, known-cut metrics beside trivial cuts, validity."""

from __future__ import annotations

import math

import pytest

from palign_ray.judge.audit import arm_sentences, audit_sample
from palign_ray.judge.contract import check_input
from palign_ray.judge.measure import (
    audit_markdown,
    audit_summary,
    compact,
    cut_summary,
    judge_measurement,
    known_cut_summary,
    roc_auc,
    validity,
)
from palign_ray.judge.problem import known_cut


def test_roc_auc_orders_ties_and_degenerate_labels():
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert roc_auc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0
    assert roc_auc([0.5, 0.5, 0.5, 0.5], [False, True, False, True]) == 0.5
    assert roc_auc([0.1, 0.5, 0.5, 0.9], [False, True, False, True]) == pytest.approx(0.875)
    assert math.isnan(roc_auc([0.1, 0.2], [True, True]))


def _audit(cut: int, shorter: int, full: int, empty: int, samples: int = 4) -> dict:
    return {
        "samples": samples,
        "correct_cut": cut,
        "correct_shorter": shorter,
        "correct_full": full,
        "correct_empty": empty,
        "errors": 0,
        "prompt_tokens": 10,
        "generated_tokens": 20,
    }


def test_audit_rates_paired_differences_and_minimality():
    audits = [_audit(4, 0, 4, 0)] * 10 + [_audit(2, 2, 4, 0)] * 10
    a = audit_summary(audits, seed=0)
    assert a["num_problems"] == 20 and a["samples"] == 4
    assert a["cut"]["value"] == pytest.approx(0.75) and a["empty"]["value"] == 0.0
    assert a["full"]["value"] == 1.0
    assert a["cut_minus_empty"]["diff"] == pytest.approx(0.75)
    assert a["cut_minus_empty"]["ci95"][0] > 0
    assert a["minimal"]["value"] == 0.5 and a["sufficient_and_minimal"]["value"] == 0.5
    assert a["cut"]["ci95"][0] <= 0.75 <= a["cut"]["ci95"][1]
    assert a["generated_tokens"] == 400
    assert audit_summary([]) is None


def test_a_judge_no_better_than_the_empty_prefix_is_invalid():
    # the cut solves as often as no reasoning at all: the audit cannot tell it from its floor
    audits = [_audit(1, 1, 4, 1)] * 8 + [_audit(0, 0, 4, 0)] * 8
    cuts = {"num_multi_sentence": 16, "share_full": 0.2, "share_first": 0.2}
    v = validity(audit_summary(audits), cuts, None)
    assert v["status"] == "invalid" and "not above the empty prefix" in v["reasons"][0]
    good = validity(audit_summary([_audit(3, 0, 4, 0)] * 16), cuts, None)
    assert good == {"status": "valid", "reasons": [], "rule": good["rule"]}


def test_degenerate_cuts_are_invalid_even_when_the_audit_passes():
    # keeping every trace whole solves as well as the full trace: the audit passes, the rule does not
    audits = [_audit(4, 4, 4, 0)] * 16
    cuts = {"num_multi_sentence": 16, "share_full": 1.0, "share_first": 0.0}
    v = validity(audit_summary(audits), cuts, None)
    assert v["status"] == "invalid" and v["reasons"] == [
        "degenerate: 100% of 16 cuts keep the whole trace"
    ]
    few = {"num_multi_sentence": 4, "share_full": 1.0, "share_first": 0.0}
    assert validity(None, few, None)["status"] == "unmeasured"


def _rec(k: int, n: int, known: int, probes=()) -> dict:
    return {
        "prefix_sentences": k,
        "num_sentences": n,
        "prefix_ratio_sentences": k / n,
        "known_cut": known,
        "audit": None,
        "probes": list(probes),
    }


def test_known_cut_metrics_put_trivial_cuts_beside_the_judge():
    # 10 traces of 10 sentences whose known cut is sentence 6; the judge hits it on 6, is one late on 4
    recs = [_rec(6, 10, 6)] * 6 + [_rec(7, 10, 6)] * 4
    k = known_cut_summary(recs, fixed_ratio=0.25, seed=0)
    judge = k["cuts"]["judge"]
    assert judge["exact"]["value"] == 0.6 and judge["within_1"]["value"] == 1.0
    assert judge["late"]["value"] == 0.4 and judge["early"]["value"] == 0.0
    assert k["cuts"]["always_full"]["late"]["value"] == 1.0
    assert k["cuts"]["always_first"]["early"]["value"] == 1.0
    assert k["cuts"]["fixed_ratio_0.25"]["early"]["value"] == 1.0  # 3 of 10 sentences
    assert k["known_ratio"] == pytest.approx(0.6)
    assert known_cut_summary([_rec(3, 5, -1)], 0.25) is None


def test_verdict_scores_that_separate_known_cuts_are_valid_and_noise_is_invalid():
    separating = [_rec(5, 8, 5, [(4, 0.1, False), (5, 0.9, True), (2, 0.05, False)])] * 12
    cuts = cut_summary(separating)
    k = known_cut_summary(separating, 0.25, seed=0)
    assert k["auc"]["value"] == 1.0 and validity(None, cuts, k)["status"] == "valid"
    # the same score on both sides of the known cut: chance
    flat = [_rec(5, 8, 5, [(4, 0.5, True), (5, 0.5, True)])] * 12
    k = known_cut_summary(flat, 0.25, seed=0)
    v = validity(None, cut_summary(flat), k)
    assert k["auc"]["value"] == 0.5 and v["status"] == "invalid" and "chance" in v["reasons"][0]
    # scores that rank the known cut backwards are significant, and invalid (regression: the default
    # run of 2026-12-05 had AUC 0.31 [0.19, 0.44] and the "CI contains 0.5" rule called it valid)
    backwards = [_rec(5, 8, 5, [(4, 0.9, True), (5, 0.1, False), (2, 0.8, True)])] * 12
    k = known_cut_summary(backwards, 0.25, seed=0)
    v = validity(None, cut_summary(backwards), k)
    assert (
        k["auc"]["ci95"][1] < 0.5 and v["status"] == "invalid" and "below chance" in v["reasons"][0]
    )
    # generate verdicts carry no score: the verdict itself is the score
    votes = [_rec(5, 8, 5, [(4, None, False), (6, None, True)])] * 12
    assert known_cut_summary(votes, 0.25)["auc"]["value"] == 1.0


def test_measurement_of_truncate_rows_and_its_report_section():
    rows = [
        {
            "prefix_sentences": 3,
            "num_sentences": 6,
            "prefix_ratio_sentences": 0.5,
            "known_cut": 3,
            "audit": _audit(2, 0, 2, 0, samples=2) | {f"k_{a}": 0 for a in ("cut",)},
            "probe_trace": [
                {"k": 3, "score": 0.9, "verdict": True, "anchor": False},
                {"k": 1, "score": 0.2, "verdict": False, "anchor": False},
                {"k": 0, "score": 0.5, "verdict": True, "anchor": True},  # anchors are not probes
            ],
        }
    ] * 6
    recs = [compact(r) for r in rows]
    assert recs[0]["probes"] == [(3, 0.9, True), (1, 0.2, False)]
    m = judge_measurement(recs, judged=True, fixed_ratio=0.25)
    assert m["validity"]["status"] == "valid", m["validity"]
    md = "\n".join(audit_markdown(m))
    assert "**judge valid**" in md and "| cut | 1.00" in md and "always_full" in md
    none = judge_measurement(recs, judged=False, fixed_ratio=0.25)
    assert none["validity"]["status"] == "no judge"
    off = judge_measurement(
        [compact({**rows[0], "audit": None, "known_cut": -1})] * 6,
        judged=True,
        fixed_ratio=0.25,
        audit_note="judge.audit_problems=0",
    )
    assert off["validity"]["status"] == "unmeasured"
    assert "No audit: judge.audit_problems=0" in "\n".join(audit_markdown(off))


def test_audit_sample_is_seeded_sized_and_independent_of_order_and_parts():
    ids = [f"p{i}" for i in range(100)]
    a = audit_sample(ids, 10, seed=0)
    assert len(a) == 10 and a == audit_sample(reversed(ids), 10, seed=0)
    assert a != audit_sample(ids, 10, seed=1)
    assert audit_sample(ids, 0, 0) == frozenset() and audit_sample(ids[:3], 10, 0) == set(ids[:3])


def test_audit_arms():
    assert arm_sentences(4, 9) == {"cut": 4, "shorter": 3, "full": 9, "empty": 0}
    assert (
        arm_sentences(1, 9)["shorter"] == 0
    )  # one sentence less than sentence 1 is the empty prefix


def test_known_cut_is_checked_against_the_splitter():
    ends = [10, 25, 40]
    assert known_cut(1, 25, ends) == 2 and known_cut(1.0, None, ends) == 2
    assert known_cut(1, 26, ends) == -1  # the data's sentence ends elsewhere: not scored
    for bad in (None, 3, -1, 1.5, float("nan"), True, "1"):
        assert known_cut(bad, None, ends) == -1


def test_check_input_drops_the_known_cut_of_teacher_samples():
    base = {"question": "Q?", "cot": "A. B.", "answer": "1", "decisive_sentence": 0}
    rows = [
        {**base, "problem_id": "ref", "trace_source": "reference"},
        {**base, "problem_id": "gen", "trace_source": "teacher"},
    ]
    ok, bad = check_input(rows, "decisive_sentence")
    assert not bad and [r["known_index"] for r in ok] == [0, None]
    again, _ = check_input(ok, "decisive_sentence")  # the in-memory path checks twice
    assert [r["known_index"] for r in again] == [0, None]
    assert [r["known_index"] for r in check_input(rows, "")[0]] == [None, None]
