"""Judge prompts as token ids that share a cacheable prefix, and verdict parsing (pure apart from a tokenizer).

A probe of prefix length c (characters of the CoT) is `head + cot_ids[:j] + tail (+ prefill)`, where
head = chat-template head + instruction + question + "Partial reasoning:\n" (tokenized once per
problem), cot_ids = the CoT tokenized ONCE with offsets, j = number of CoT tokens ending at or
before c, and tail = "\n" + template end + assistant start. Every probe of a problem is therefore a
token-prefix extension of the same head, and probes of longer prefixes extend shorter ones up to
their tails, which is what vLLM's prefix cache reuses across rounds.

Tokenization boundary: the ids are the concatenation of three separately tokenized pieces, so they
may differ from tokenizing the whole rendered string at the two joints (head|CoT, CoT|tail), but
they decode to exactly the rendered text. Within the CoT, a cut at c that falls inside a token
(never the case for byte-level BPE at a non-space/space boundary, which is where rstripped
sentence ends lie) is completed by tokenizing the leftover characters on their own, so the decoded
text is always exactly the prompt rendered with `cot[:c]`.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any

from palign_ray.chat import render_chat, user_turn

# The authors' judge prompt, verbatim (an f-string that begins and ends with a newline).
PAPER_V1 = """
You are a reasoning evaluator.

You are given a partial reasoning prefix extracted from a longer chain-of-thought.
Your task is to judge whether this prefix already contains the essential logical structure and key transformations needed to complete the solution.

- Reply "[ENOUGH]" if the prefix establishes the core reasoning steps such that the remaining reasoning is straightforward or routine.
- Reply "[NOT_ENOUGH]" if any crucial reasoning step is still missing, making it difficult to reliably complete the solution.

Reply with exactly one token: [ENOUGH] or [NOT_ENOUGH].

Question:
{question}

Partial reasoning:
{reasoning_part}
"""

PROMPTS: dict[str, str] = {"paper-v1": PAPER_V1}
ENOUGH_TAG = "[ENOUGH]"
NOT_ENOUGH_TAG = "[NOT_ENOUGH]"
_SENTINEL = "\x00PALIGN_REASONING\x00"


def judge_template(version: str) -> str:
    if version not in PROMPTS:
        raise ValueError(f"judge.prompt_version={version!r} is unknown; known: {sorted(PROMPTS)}")
    return PROMPTS[version]


def render_judge_prompt(question: str, reasoning: str, version: str = "paper-v1") -> str:
    """The user-turn text of one probe (what the authors' f-string produces)."""
    return judge_template(version).format(question=question, reasoning_part=reasoning)


def render_judge_chat(tokenizer: Any, question: str, reasoning: str, version: str = "paper-v1") -> str:
    """The full chat text of one probe through the judge's template (thinking disabled)."""
    return render_chat(tokenizer, user_turn(render_judge_prompt(question, reasoning, version)))


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False)) if text else []


@dataclass(frozen=True)
class VerdictTokens:
    """Where the two verdict replies part: prefill `common`, then compare `enough_id` vs `not_enough_id`."""

    common: tuple[int, ...]
    enough_id: int
    not_enough_id: int


def verdict_tokens(tokenizer: Any) -> VerdictTokens:
    """First position where the tokenizations of "[ENOUGH]" and "[NOT_ENOUGH]" differ (as a reply start)."""
    e, n = _encode(tokenizer, ENOUGH_TAG), _encode(tokenizer, NOT_ENOUGH_TAG)
    i = 0
    while i < min(len(e), len(n)) and e[i] == n[i]:
        i += 1
    if i >= min(len(e), len(n)):
        raise ValueError(f"the tokenizer encodes {ENOUGH_TAG} as a prefix of {NOT_ENOUGH_TAG} (or vice versa): {e} vs {n}")
    return VerdictTokens(tuple(e[:i]), e[i], n[i])


@dataclass(frozen=True)
class ProblemPrompt:
    """One problem's pieces; `ids(c)` is the probe of prefix cot[:c]."""

    head: tuple[int, ...]
    cot_ids: tuple[int, ...]
    cot_ends: tuple[int, ...]  # character end offset of each CoT token (non-decreasing)
    cot: str
    tail: tuple[int, ...]  # includes the logprob prefill when built for logprob verdicts
    tokenizer: Any

    def cot_tokens(self, char_end: int) -> list[int]:
        """CoT token ids covering exactly cot[:char_end] (tokens ending at or before it, plus any leftover)."""
        j = bisect.bisect_right(self.cot_ends, char_end)
        ids = list(self.cot_ids[:j])
        covered = self.cot_ends[j - 1] if j else 0
        if covered < char_end:  # the cut falls inside a token: tokenize the leftover characters alone
            ids += _encode(self.tokenizer, self.cot[covered:char_end])
        return ids

    def num_cot_tokens(self, char_end: int) -> int:
        j = bisect.bisect_right(self.cot_ends, char_end)
        covered = self.cot_ends[j - 1] if j else 0
        return j + (len(_encode(self.tokenizer, self.cot[covered:char_end])) if covered < char_end else 0)

    def num_tokens(self, char_end: int) -> int:
        return len(self.head) + self.num_cot_tokens(char_end) + len(self.tail)

    def ids(self, char_end: int) -> list[int]:
        return list(self.head) + self.cot_tokens(char_end) + list(self.tail)


class JudgePromptBuilder:
    """Splits the rendered judge chat at the reasoning slot once per tokenizer/version; builds per-problem ids."""

    def __init__(self, tokenizer: Any, version: str = "paper-v1", prefill: tuple[int, ...] = ()):
        self.tokenizer, self.version, self.prefill = tokenizer, version, tuple(prefill)
        if not getattr(tokenizer, "is_fast", True):
            raise ValueError("the judge needs a fast tokenizer (return_offsets_mapping); load it with use_fast=True")

    def split(self, question: str) -> tuple[str, str]:
        """(head text, tail text) around the reasoning slot, as the chat template renders them."""
        text = render_judge_chat(self.tokenizer, question, _SENTINEL, self.version)
        if text.count(_SENTINEL) != 1:
            raise ValueError("the judge's chat template altered the prompt; cannot locate the reasoning slot")
        head, tail = text.split(_SENTINEL)
        return head, tail

    def build(self, question: str, cot: str) -> ProblemPrompt:
        head, tail = self.split(question)
        enc = self.tokenizer(cot, add_special_tokens=False, return_offsets_mapping=True)
        ends = tuple(int(e) for _, e in enc["offset_mapping"])
        # Offsets must not go backwards for bisect; a tokenizer with odd offsets fails loudly here.
        if any(b < a for a, b in zip(ends, ends[1:], strict=False)):
            raise ValueError("tokenizer offsets are not monotone; cannot cut the CoT by character offset")
        tail_ids = tuple(_encode(self.tokenizer, tail)) + self.prefill
        return ProblemPrompt(tuple(_encode(self.tokenizer, head)), tuple(enc["input_ids"]), ends, cot, tail_ids, self.tokenizer)


# ---- verdicts ---------------------------------------------------------------------------------


def parse_generated(response: str) -> tuple[bool, bool]:
    """The authors' rule: sufficient iff "[ENOUGH]" in response or response.strip() == "ENOUGH".

    Returns (verdict, has_tag); has_tag is False when the output names neither tag nor is the bare
    word, i.e. the verdict came from the rule's default rather than from the judge.
    """
    sufficient = ENOUGH_TAG in response or response.strip() == "ENOUGH"
    has_tag = sufficient or NOT_ENOUGH_TAG in response or response.strip() == "NOT_ENOUGH"
    return sufficient, has_tag


def generated_verdict(response: str, unparseable: str = "not_enough") -> tuple[bool, bool]:
    """(verdict, parseable) with the configured policy for outputs without a tag."""
    verdict, has_tag = parse_generated(response)
    if not has_tag:
        verdict = unparseable == "enough"
    return verdict, has_tag


@dataclass(frozen=True)
class LogprobScore:
    p_enough: float  # softmax over the two verdict tokens
    logprob_enough: float  # raw (full-vocabulary) log-probabilities
    logprob_not_enough: float
    complete: bool  # both tokens were in the returned logprobs (else the missing one is bounded)


def logprob_score(logprobs: dict[int, float] | None, vt: VerdictTokens) -> LogprobScore | None:
    """p(ENOUGH) from the first generated step's logprobs; None when neither verdict token is present.

    A token missing from a top-k answer has a logprob at most the smallest one returned, so that
    bound stands in for it (flagged `complete=False`).
    """
    if not logprobs:
        return None
    le, ln = logprobs.get(vt.enough_id), logprobs.get(vt.not_enough_id)
    if le is None and ln is None:
        return None
    floor = min(logprobs.values())
    complete = le is not None and ln is not None
    le = floor if le is None else le
    ln = floor if ln is None else ln
    if math.isinf(le) and math.isinf(ln):
        return None
    m = max(le, ln)
    p = math.exp(le - m) / (math.exp(le - m) + math.exp(ln - m))
    return LogprobScore(p, le, ln, complete)
