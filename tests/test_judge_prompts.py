"""Judge prompt: verbatim template, shared token-id prefixes, decode equality, verdict parsing."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random

import pytest

from palign_ray.config import JudgeConfig
from palign_ray.engines.base import Completion, GenerationResult
from palign_ray.judge.probes import judge_result
from palign_ray.judge.problem import sentence_ends
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


def test_template_is_the_papers_verbatim(paper_md):
    doc = paper_md.read_text()
    start = doc.index("Judge prompt")
    block = doc[
        doc.index("```text\n", start) + len("```text\n") : doc.index(
            "```", doc.index("```text\n", start) + 8
        )
    ]
    assert PAPER_V1 == block
    assert PAPER_V1.startswith("\nYou are a reasoning evaluator.\n") and PAPER_V1.endswith(
        "Partial reasoning:\n{reasoning_part}\n"
    )
    assert render_judge_prompt("Q?", "R.") == PAPER_V1.format(question="Q?", reasoning_part="R.")
    with pytest.raises(ValueError, match="prompt_version"):
        render_judge_prompt("Q", "R", version="v999")


def test_verdict_tokens_smollm2(tokenizer):
    vt = verdict_tokens(tokenizer)
    assert tokenizer.decode(list(vt.common)) == "["
    assert (
        tokenizer.decode([vt.enough_id]) == "EN" and tokenizer.decode([vt.not_enough_id]) == "NOT"
    )


def test_head_tail_split(tokenizer):
    head, tail = JudgePromptBuilder(tokenizer).split("What is 1+1?")
    assert (
        head.endswith("Question:\nWhat is 1+1?\n\nPartial reasoning:\n")
        and "<|im_start|>user" in head
    )
    assert tail == "\n<|im_end|>\n<|im_start|>assistant\n"
    assert head + "X" + tail == render_judge_chat(tokenizer, "What is 1+1?", "X")


COT = (
    "First, note that 3.14 is close to pi. Then compute $x^2 = 9$, so x = 3.\n\n"
    "Next, check e.g. the case x = -3! Does it work? Yes.\nTherefore the answer is 3."
)


# Qwen2's pre-tokenizer: punctuation takes the newlines after it ('.\n' is one token), digits are single.
QWEN2_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _aime_rows(shared_data: str) -> list[dict]:
    return [
        json.loads(line)
        for line in open(os.path.join(shared_data, "palign-results", "aime24-output.jsonl"))
    ]


@pytest.fixture(scope="module")
def qwen_like_tokenizer(shared_data):
    """A byte-level BPE trained here (no download) with Qwen2's pre-tokenizer and a ChatML template."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=3000,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    rows = _aime_rows(shared_data)
    tok.train_from_iterator(
        [r["output"][0][:20000] for r in rows[5:]] + [PAPER_V1, COT], trainer
    )  # traces 0-4 unseen
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", chat_template=CHATML
    )
    pieces = [fast.decode([i]) for i in fast.encode("so x = 3.\nThen", add_special_tokens=False)]
    assert ".\n" in pieces, pieces  # the merge that makes separately encoded tails differ
    return fast


def _rendered_ids(tok, question: str, reasoning: str, prefill: tuple[int, ...]) -> list[int]:
    """What the engine would get from tokenizing the probe's text (the prefill is the reply's own start)."""
    return list(
        tok.encode(render_judge_chat(tok, question, reasoning), add_special_tokens=False)
    ) + list(prefill)


def _mismatches(tok, question: str, cot: str, cuts, prefill: tuple[int, ...]) -> list[int]:
    pp = JudgePromptBuilder(tok, prefill=prefill).build(question, cot)
    return [c for c in cuts if pp.ids(c) != _rendered_ids(tok, question, cot[:c], prefill)]


@pytest.mark.parametrize("prefill", [True, False])
def test_probe_ids_share_the_head_and_decode_exactly(tokenizer, prefill):
    vt = verdict_tokens(tokenizer)
    b = JudgePromptBuilder(tokenizer, prefill=vt.common if prefill else ())
    q = "Find x if x^2 = 9 and x > 0."
    pp = b.build(q, COT)
    cuts = sorted(
        {COT.index(s) + len(s) for s in ("pi.", "x = 3.", "x = -3!", "Yes.")}
        | {0, len(COT)}
        | {3, COT.index("compute") + 3}
    )  # two cuts inside words
    for c in cuts:
        ids = pp.ids(c)
        assert ids[: len(pp.head)] == list(pp.head)
        assert ids[len(ids) - len(vt.common if prefill else ()) :] == list(
            vt.common if prefill else ()
        )
        assert tokenizer.decode(ids) == render_judge_chat(tokenizer, q, COT[:c]) + (
            "[" if prefill else ""
        )
        assert pp.num_tokens(c) == len(ids) == len(pp.head) + pp.num_cot_tokens(c) + len(pp.tail)
    stable = [pp.num_stable_tokens(c) for c in cuts]
    assert stable == sorted(stable) and stable[0] == len(pp.head)
    for c1, c2 in zip(
        cuts, cuts[1:], strict=False
    ):  # a longer prefix's probe repeats the shorter one's stable part
        assert pp.ids(c2)[: pp.num_stable_tokens(c1)] == pp.ids(c1)[: pp.num_stable_tokens(c1)]
    with pytest.raises(ValueError, match="outside the CoT"):
        pp.ids(len(COT) + 1)


def _common_prefix(a: list[int], b: list[int]) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


@pytest.mark.parametrize("which", ["smollm2", "qwen2_bpe"])
def test_probes_of_real_traces_share_the_cache(which, tokenizer, qwen_like_tokenizer, shared_data):
    """Sentence-end probes of real traces: the next probe repeats all but the last few tokens (prefix caching)."""
    tok = tokenizer if which == "smollm2" else qwen_like_tokenizer
    b = JudgePromptBuilder(tok, prefill=verdict_tokens(tok).common)
    fresh, unshared = [], []
    for r in _aime_rows(shared_data)[:3]:
        cot = r["output"][0][:6000]
        pp = b.build(r["prompt_ori"], cot)
        ends = sentence_ends(cot, "robust", 400)
        assert len(ends) > 10
        for e1, e2 in zip(ends, ends[1:], strict=False):
            ids = pp.ids(e1)
            assert pp.ids(e2)[: pp.num_stable_tokens(e1)] == ids[: pp.num_stable_tokens(e1)]
            fresh.append(
                len(ids) - len(pp.tail) - pp.num_stable_tokens(e1)
            )  # CoT tokens re-encoded with the tail
            unshared.append(len(ids) - len(pp.tail) - _common_prefix(ids, pp.ids(e2)))
    # measured: re-encoded mean 2.9, max 11 (SmolLM2) / 10 (Qwen2-style); unshared before the tail max 0 / 1
    assert max(fresh) <= 16 and sum(fresh) / len(fresh) < 5  # within one KV-cache block
    assert max(unshared) <= 1  # Qwen2-style: the cut's '.' becomes '.\n' with the tail


def test_a_tokenizer_that_merges_across_words_falls_back_to_whole_probes(shared_data, caplog):
    """No pre-tokenizer (BPE merges spaces into words): the self-test fails, each probe is encoded whole, still exact."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1500,
        special_tokens=["<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(
        [r["output"][0][:5000] for r in _aime_rows(shared_data)[5:15]] + [PAPER_V1], trainer
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", chat_template=CHATML
    )
    with caplog.at_level("WARNING", logger="palign_ray.judge.prompts"):
        bad = _mismatches(fast, "What is x?", COT, range(len(COT) + 1), ())
    assert bad == []
    assert "merges tokens across word boundaries" in caplog.text


@pytest.mark.parametrize("which", ["smollm2", "qwen2_bpe"])
def test_probe_ids_equal_encoding_the_rendered_prompt(
    which, tokenizer, qwen_like_tokenizer, shared_data
):
    """Property: for every cut (each character of a short CoT; sentence ends and random offsets of real
    traces) the probe's ids are exactly the tokenization of its rendered text."""
    tok = tokenizer if which == "smollm2" else qwen_like_tokenizer
    prefill = verdict_tokens(tok).common
    q = "Find x if x^2 = 9 and x > 0."
    bad = _mismatches(tok, q, COT, range(len(COT) + 1), prefill)
    assert bad == [], (
        f"{len(bad)} of {len(COT) + 1} cuts differ, e.g. {[COT[max(0, c - 8) : c] for c in bad[:5]]}"
    )
    rng = random.Random(0)
    for r in _aime_rows(shared_data)[:2]:
        cot = r["output"][0][:4000]
        cuts = sorted({0, *sentence_ends(cot, "robust", 400), *rng.sample(range(len(cot) + 1), 40)})
        bad = _mismatches(tok, r["prompt_ori"], cot, cuts, prefill)
        assert bad == [], (
            f"{len(bad)} of {len(cuts)} cuts differ, e.g. {[cot[max(0, c - 8) : c] for c in bad[:5]]}"
        )


def test_the_k0_anchor_is_the_rendered_prompt(tokenizer, qwen_like_tokenizer):
    """The contextual calibration's empty-reasoning anchor: the head's ':\n' and the tail's '\n' meet."""
    q = "What is 1+1?"
    for tok in (tokenizer, qwen_like_tokenizer):
        prefill = verdict_tokens(tok).common
        pp = JudgePromptBuilder(tok, prefill=prefill).build(q, COT)
        ids = pp.ids(0)
        assert ids == _rendered_ids(tok, q, "", prefill) and pp.num_tokens(0) == len(ids)
        im_end = tok.convert_tokens_to_ids("<|im_end|>")
        end = len(ids) - 1 - ids[::-1].index(im_end)  # the user turn's end
        assert tok.decode(ids[end - 1 : end]).endswith(
            ":\n\n" if tok is qwen_like_tokenizer else "\n\n"
        )  # one token, as the text encodes
        assert ids[: len(pp.head)] == list(pp.head)


def test_parse_generated_is_the_authors_rule():
    assert parse_generated("[ENOUGH]") == (True, True)
    assert parse_generated("  ENOUGH \n") == (True, True)
    assert parse_generated("I think [NOT_ENOUGH] because") == (False, True)
    assert parse_generated("[NOT_ENOUGH] ... actually [ENOUGH]") == (
        True,
        True,
    )  # substring rule wins
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
    assert (
        s is not None
        and s.complete
        and abs(s.p_enough - 0.75) < 1e-9
        and abs(s.logprob_enough - math.log(0.3)) < 1e-12
    )
    s = logprob_score(
        {1: -1.0, 7: -3.0}, vt
    )  # NOT_ENOUGH missing from a top-k answer: bounded by the smallest
    assert s is not None and not s.complete and s.logprob_not_enough == -3.0 and s.p_enough > 0.5
    assert logprob_score({7: -1.0}, vt) is None and logprob_score(None, vt) is None
    assert logprob_score({1: -math.inf, 2: -0.1}, vt).p_enough == 0.0  # type: ignore[union-attr]


def _res(*comps: Completion) -> GenerationResult:
    return GenerationResult(tuple(comps), 10, 4)


def test_judge_result_modes():
    from palign_ray.judge.prompts import VerdictTokens

    vt = VerdictTokens((75,), 1, 2)
    lp = JudgeConfig(verdict="logprob", threshold=0.6)
    o = judge_result(
        _res(Completion("EN", (1,), "length", ({1: math.log(0.5), 2: math.log(0.5)},))), lp, vt
    )
    assert (
        o["verdict"] is False and o["p_enough"] == pytest.approx(0.5) and o["parseable"]
    )  # 0.5 < threshold 0.6
    o = judge_result(_res(Completion("x", (9,), "length", None)), lp, vt)
    assert o["verdict"] is False and o["error"] == "no_verdict_logprobs" and not o["parseable"]
    voting = dataclasses.replace(lp, votes=3, temperature=1.0)
    comps = [
        Completion("EN", (1,), "length", ({1: -0.5, 2: -1.0},)),
        Completion("NOT", (2,), "length", ({1: -0.5, 2: -1.0},)),
        Completion("EN", (1,), "length", ({1: -0.5, 2: -1.0},)),
    ]
    o = judge_result(_res(*comps), voting, vt)
    assert o["votes"] == [True, False, True] and o["verdict"] is True
    gen = JudgeConfig(verdict="generate")
    o = judge_result(_res(Completion("Sure! [ENOUGH]", (5, 6), "stop")), gen, vt)
    assert (
        o["verdict"] and o["parseable"] and o["raw"] == "Sure! [ENOUGH]" and o["p_enough"] is None
    )
    o = judge_result(_res(Completion("blah " * 100, (5,) * 256, "length")), gen, vt)
    assert o["verdict"] is False and not o["parseable"] and len(o["raw"]) == 200
