"""Judge prompts as token ids that share a cacheable prefix, and verdict parsing (pure apart from a tokenizer).

A probe of prefix length c (characters of the CoT) is the rendered chat head + cot[:c] + tail, where
head = chat-template head + instruction + question + "Partial reasoning:\n" and tail = "\n" +
template end + assistant start, plus the logprob prefill appended as ids. Its ids are exactly what
tokenizing that text gives (the model sees the splits it was trained on, also at the two joints:
SmolLM2 encodes the k = 0 anchor's ':\n' + '\n' as ':', '\n\n'; a Qwen2-style tokenizer turns a
sentence-final '.' + the tail's '\n' into one '.\n' token).

Cheaply: head + the whole CoT is tokenized once per problem; a probe keeps those tokens up to the
last safe cut before its end (a point where the tokenizer's pre-tokenization splits whatever
follows, see _SAFE_CUT) and re-encodes only the characters from there together with the tail. So
every probe of a problem is a token-prefix extension of the same head, probes of longer prefixes
repeat shorter ones up to their last few tokens, and vLLM's prefix cache reuses them across rounds.
A tokenizer without such cut points (checked once per builder) gets each probe encoded whole.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any

from palign_ray.chat import render_chat, user_turn

log = logging.getLogger(__name__)

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


def render_judge_chat(
    tokenizer: Any, question: str, reasoning: str, version: str = "paper-v1"
) -> str:
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
        raise ValueError(
            f"the tokenizer encodes {ENOUGH_TAG} as a prefix of {NOT_ENOUGH_TAG} (or vice versa): {e} vs {n}"
        )
    return VerdictTokens(tuple(e[:i]), e[i], n[i])


# Offsets where a byte-level BPE with a GPT-2/Qwen2/Llama-3 style pre-tokenizer splits the text, and
# where the tokens before do not depend on anything after: before a space that ends a non-space run,
# and after a lone newline between two non-space characters (a longer whitespace run may be split
# differently once its next character is known). No pre-token spans them: a word takes a space
# before it, never after; punctuation takes the newlines after it, never the next word.
_SAFE_CUT = re.compile(r"(?<=\S)(?= )|(?<=\S\n)(?=\S)")
# A CoT-like sample with every kind of joint (spaces, blank lines, tabs, punctuation before newlines,
# LaTeX, digits, non-ASCII): the builder checks once per tokenizer that cutting it at _SAFE_CUT
# reproduces the tokenization of every probe.
_SELF_TEST_COT = (
    "First, note that 3.14 is close to pi.  Then compute $x^2 = 9$, so x = 3.\n\n"
    "Next:\tcheck e.g. the case x = -3! Does it work? Yes.\n- Since (a+b)^2 = 4, we get \\frac{1}{2}.\n"
    "It's 42%, i.e. 0.42...\n\n\nWait -- caf\u00e9 \u4e2d\u6587 \u2211.\nSo the answer is \\boxed{3}."
)


@dataclass(frozen=True)
class ProblemPrompt:
    """One problem's probes; `ids(c)` is the probe of prefix cot[:c], the tokenization of its rendered text.

    `text` = head text + the whole CoT, tokenized once; a probe of cot[:c] takes those tokens up to
    the last safe cut before its end and re-encodes the few characters from there together with the
    template tail, as one string (where the tokenizer merges across the tail joint: '.' + '\n').
    """

    text: str
    head_chars: (
        int  # len(head text): the probe of cot[:c] ends its reasoning at text[head_chars + c]
    )
    cuts: tuple[int, ...]  # safe cut offsets into text, ascending, starting at 0
    counts: tuple[int, ...]  # counts[i] = number of stable tokens of text[:cuts[i]]
    stable: tuple[int, ...]  # the tokens of text
    tail_text: str
    prefill: tuple[int, ...]  # the reply's first tokens (logprob verdicts), appended as ids
    head: tuple[
        int, ...
    ]  # the ids every probe of this problem starts with (the k = 0 anchor's stable part)
    tail: tuple[
        int, ...
    ]  # the tail's own ids + prefill: the fixed end of a probe, for token budgets
    tokenizer: Any
    _fresh: dict[int, list[int]] = field(
        default_factory=dict, compare=False, repr=False
    )  # re-encoded ends by offset

    def _split(self, char_end: int) -> tuple[int, list[int]]:
        """(stable tokens kept, re-encoded ids) of the probe of cot[:char_end]."""
        if not 0 <= char_end <= len(self.text) - self.head_chars:
            raise ValueError(
                f"cut {char_end} is outside the CoT (0..{len(self.text) - self.head_chars})"
            )
        x = self.head_chars + char_end
        i = max(0, bisect.bisect_left(self.cuts, x) - 1)  # the last safe cut strictly before x
        if x not in self._fresh:
            self._fresh[x] = _encode(self.tokenizer, self.text[self.cuts[i] : x] + self.tail_text)
        return self.counts[i], self._fresh[x]

    def ids(self, char_end: int) -> list[int]:
        kept, fresh = self._split(char_end)
        return list(self.stable[:kept]) + fresh + list(self.prefill)

    def num_tokens(self, char_end: int) -> int:
        kept, fresh = self._split(char_end)
        return kept + len(fresh) + len(self.prefill)

    def num_cot_tokens(self, char_end: int) -> int:
        """Tokens of the probe beyond `head` and `tail`: the CoT's, give or take the few re-encoded at the joints.

        head + tail + this = num_tokens exactly, so budgets computed from the three hold.
        """
        return self.num_tokens(char_end) - len(self.head) - len(self.tail)

    def num_stable_tokens(self, char_end: int) -> int:
        """Leading tokens of ids(char_end) that the probe of every longer prefix repeats (what the prefix cache reuses)."""
        return self._split(char_end)[0]


class JudgePromptBuilder:
    """Splits the rendered judge chat at the reasoning slot once per tokenizer/version; builds per-problem ids."""

    def __init__(self, tokenizer: Any, version: str = "paper-v1", prefill: tuple[int, ...] = ()):
        self.tokenizer, self.version, self.prefill = tokenizer, version, tuple(prefill)
        self._cuts_hold: bool | None = None  # checked on the first build

    def split(self, question: str) -> tuple[str, str]:
        """(head text, tail text) around the reasoning slot, as the chat template renders them."""
        text = render_judge_chat(self.tokenizer, question, _SENTINEL, self.version)
        if text.count(_SENTINEL) != 1:
            raise ValueError(
                "the judge's chat template altered the prompt; cannot locate the reasoning slot"
            )
        head, tail = text.split(_SENTINEL)
        return head, tail

    def build(self, question: str, cot: str) -> ProblemPrompt:
        if self._cuts_hold is None:
            self._cuts_hold = self._check_cuts()
        head, tail = self.split(question)
        return self._build(head, tail, cot, self._cuts_hold)

    def _build(self, head: str, tail: str, cot: str, use_cuts: bool) -> ProblemPrompt:
        text = head + cot
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        stable = tuple(enc["input_ids"])
        cuts, counts = [0], [0]
        if use_cuts:
            for c, j in _token_cuts(text, [(int(a), int(b)) for a, b in enc["offset_mapping"]]):
                cuts.append(c)
                counts.append(j)
        pp = ProblemPrompt(
            text,
            len(head),
            tuple(cuts),
            tuple(counts),
            stable,
            tail,
            self.prefill,
            (),
            (),
            self.tokenizer,
        )
        fixed_tail = tuple(_encode(self.tokenizer, tail)) + self.prefill
        return dataclasses.replace(pp, head=stable[: pp.num_stable_tokens(0)], tail=fixed_tail)

    def _check_cuts(self) -> bool:
        """Whether cutting at _SAFE_CUT reproduces every probe's tokenization with this tokenizer (once)."""
        head, tail = self.split("What is 2 + 2?")
        pp = self._build(
            head[-80:], tail, _SELF_TEST_COT, True
        )  # the head's end is what meets the CoT
        texts = [pp.text[: pp.head_chars + c] + tail for c in range(len(_SELF_TEST_COT) + 1)]
        want = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        bad = [c for c, ids in enumerate(want) if pp.ids(c) != list(ids) + list(self.prefill)]
        if bad:
            # Not a regex-pre-tokenized byte-level BPE: encode every probe whole (still exact; the
            # engine's prefix cache still matches it token by token, only tokenizing costs more).
            log.warning(
                "judge tokenizer %s merges tokens across word boundaries (%d of %d self-test cuts differ); "
                "each probe is tokenized whole",
                type(self.tokenizer).__name__,
                len(bad),
                len(_SELF_TEST_COT) + 1,
            )
        return not bad


def _token_cuts(text: str, offsets: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(offset, number of tokens before it) for each _SAFE_CUT offset that the tokenization also splits at."""
    starts, ends = [a for a, _ in offsets], [b for _, b in offsets]
    if any(b < a for a, b in zip(ends, ends[1:], strict=False)):
        return []  # odd offsets: no cuts, every probe is tokenized whole
    out = []
    for m in _SAFE_CUT.finditer(text):
        c = m.start()
        j = bisect.bisect_right(ends, c)
        if j and ends[j - 1] == c and (j == len(ends) or starts[j] >= c):
            out.append((c, j))
    return out


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
