"""Judge prompt: verbatim template, shared token-id prefixes, decode equality, verdict parsing."""

from __future__ import annotations

import dataclasses
import json
import math
import os

import pytest

from palign_ray.config import JudgeConfig
from palign_ray.engines.base import Completion, GenerationResult
from palign_ray.judge.prompts import (
    PAPER_V1,
    JudgePromptBuilder,
    generated_verdict,
    logprob_score,
    parse_generated,
    render_judge_chat,
    render_judge_prompt,
    verdict_tokens,
)
from palign_ray.judge.rounds import judge_result, sentence_ends


def test_template_is_the_papers_verbatim(paper_md):
    doc = paper_md.read_text()
    start = doc.index("Judge prompt")
    block = doc[doc.index("```text\n", start) + len("```text\n"): doc.index("```", doc.index("```text\n", start) + 8)]
    assert PAPER_V1 == block
    assert PAPER_V1.startswith("\nYou are a reasoning evaluator.\n") and PAPER_V1.endswith("Partial reasoning:\n{reasoning_part}\n")
    assert render_judge_prompt("Q?", "R.") == PAPER_V1.format(question="Q?", reasoning_part="R.")
    with pytest.raises(ValueError, match="prompt_version"):
        render_judge_prompt("Q", "R", version="v999")


def test_verdict_tokens_smollm2(tokenizer):
    vt = verdict_tokens(tokenizer)
    assert tokenizer.decode(list(vt.common)) == "["
    assert tokenizer.decode([vt.enough_id]) == "EN" and tokenizer.decode([vt.not_enough_id]) == "NOT"


def test_head_tail_split(tokenizer):
    head, tail = JudgePromptBuilder(tokenizer).split("What is 1+1?")
    assert head.endswith("Question:\nWhat is 1+1?\n\nPartial reasoning:\n") and "<|im_start|>user" in head
    assert tail == "\n<|im_end|>\n<|im_start|>assistant\n"
    assert head + "X" + tail == render_judge_chat(tokenizer, "What is 1+1?", "X")


COT = ("First, note that 3.14 is close to pi. Then compute $x^2 = 9$, so x = 3.\n\n"
       "Next, check e.g. the case x = -3! Does it work? Yes.\nTherefore the answer is 3.")


@pytest.mark.parametrize("prefill", [True, False])
def test_probe_ids_share_the_head_and_decode_exactly(tokenizer, prefill):
    vt = verdict_tokens(tokenizer)
    b = JudgePromptBuilder(tokenizer, prefill=vt.common if prefill else ())
    q = "Find x if x^2 = 9 and x > 0."
    pp = b.build(q, COT)
    cuts = sorted({COT.index(s) + len(s) for s in ("pi.", "x = 3.", "x = -3!", "Yes.")} | {len(COT)} | {3, COT.index("compute") + 3})  # two cuts inside words
    bodies = []
    for c in cuts:
        ids = pp.ids(c)
        assert ids[: len(pp.head)] == list(pp.head)
        assert ids[len(ids) - len(pp.tail):] == list(pp.tail)
        assert tokenizer.decode(ids) == render_judge_chat(tokenizer, q, COT[:c]) + ("[" if prefill else "")
        assert pp.num_tokens(c) == len(ids)
        if c in pp.cot_ends:  # a cut on a token boundary: the body is head + a prefix of the CoT's own ids
            body = ids[: len(ids) - len(pp.tail)]
            assert body == list(pp.head) + list(pp.cot_ids[: len(body) - len(pp.head)])
            bodies.append(body)
    assert len(bodies) >= 4
    for shorter, longer in zip(bodies, bodies[1:], strict=False):
        assert longer[: len(shorter)] == shorter, "a longer prefix's probe extends a shorter one's (the cached part)"
    assert 3 not in pp.cot_ends and COT.index("compute") + 3 not in pp.cot_ends  # mid-word cuts took the leftover path


def test_decode_equality_on_real_traces(tokenizer, shared_data):
    """Real long traces: every sentence end lies on a token boundary and the ids decode to the rendered prompt."""
    path = os.path.join(shared_data, "palign-results", "aime24-output.jsonl")
    rows = [json.loads(line) for line in open(path)][:3]
    b = JudgePromptBuilder(tokenizer, prefill=verdict_tokens(tokenizer).common)
    for r in rows:
        cot = r["output"][0][:6000]
        pp = b.build(r["prompt_ori"], cot)
        ends = sentence_ends(cot, "robust", 400)
        assert len(ends) > 10
        for e in ends[::5]:
            assert e in set(pp.cot_ends), "an rstripped sentence end should be a token boundary for byte-level BPE"
            assert tokenizer.decode(pp.ids(e)) == render_judge_chat(tokenizer, r["prompt_ori"], cot[:e]) + "["


def test_parse_generated_is_the_authors_rule():
    assert parse_generated("[ENOUGH]") == (True, True)
    assert parse_generated("  ENOUGH \n") == (True, True)
    assert parse_generated("I think [NOT_ENOUGH] because") == (False, True)
    assert parse_generated("[NOT_ENOUGH] ... actually [ENOUGH]") == (True, True)  # substring rule wins
    assert parse_generated("NOT_ENOUGH") == (False, True)
    assert parse_generated("The reasoning is enough.") == (False, False)
    assert parse_generated("") == (False, False)
    assert generated_verdict("no tag here", "enough") == (True, False)
    assert generated_verdict("no tag here", "not_enough") == (False, False)
    assert generated_verdict("[NOT_ENOUGH]", "enough") == (False, True)


def test_logprob_score():
    from palign_ray.judge.prompts import VerdictTokens

    vt = VerdictTokens((75,), 1, 2)
    s = logprob_score({1: math.log(0.3), 2: math.log(0.1)}, vt)
    assert s is not None and s.complete and abs(s.p_enough - 0.75) < 1e-9 and abs(s.logprob_enough - math.log(0.3)) < 1e-12
    s = logprob_score({1: -1.0, 7: -3.0}, vt)  # NOT_ENOUGH missing from a top-k answer: bounded by the smallest
    assert s is not None and not s.complete and s.logprob_not_enough == -3.0 and s.p_enough > 0.5
    assert logprob_score({7: -1.0}, vt) is None and logprob_score(None, vt) is None
    assert logprob_score({1: -math.inf, 2: -0.1}, vt).p_enough == 0.0  # type: ignore[union-attr]


def _res(*comps: Completion) -> GenerationResult:
    return GenerationResult(tuple(comps), 10, 4)


def test_judge_result_modes():
    from palign_ray.judge.prompts import VerdictTokens

    vt = VerdictTokens((75,), 1, 2)
    lp = JudgeConfig(verdict="logprob", threshold=0.6)
    o = judge_result(_res(Completion("EN", (1,), "length", ({1: math.log(0.5), 2: math.log(0.5)},))), lp, vt)
    assert o["verdict"] is False and o["p_enough"] == pytest.approx(0.5) and o["parseable"]  # 0.5 < threshold 0.6
    o = judge_result(_res(Completion("x", (9,), "length", None)), lp, vt)
    assert o["verdict"] is False and o["error"] == "no_verdict_logprobs" and not o["parseable"]
    voting = dataclasses.replace(lp, votes=3, temperature=1.0)
    comps = [Completion("EN", (1,), "length", ({1: -0.5, 2: -1.0},)), Completion("NOT", (2,), "length", ({1: -0.5, 2: -1.0},)),
             Completion("EN", (1,), "length", ({1: -0.5, 2: -1.0},))]
    o = judge_result(_res(*comps), voting, vt)
    assert o["votes"] == [True, False, True] and o["verdict"] is True
    gen = JudgeConfig(verdict="generate")
    o = judge_result(_res(Completion("Sure! [ENOUGH]", (5, 6), "stop")), gen, vt)
    assert o["verdict"] and o["parseable"] and o["raw"] == "Sure! [ENOUGH]" and o["p_enough"] is None
    o = judge_result(_res(Completion("blah " * 100, (5,) * 256, "length")), gen, vt)
    assert o["verdict"] is False and not o["parseable"] and len(o["raw"]) == 200
