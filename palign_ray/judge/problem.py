"""One problem being judged: its sentences, the part of the trace the judge sees, its prompt and
search state, and the known cut where the data gives one."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from palign_ray import records as R
from palign_ray.artifacts import quarantine_row
from palign_ray.config import JudgeConfig
from palign_ray.judge.calibration import Calibrator
from palign_ray.judge.contract import KNOWN_CHAR_END, KNOWN_INDEX, STAGE
from palign_ray.judge.prompts import JudgePromptBuilder, ProblemPrompt
from palign_ray.judge.search import SearchState


@dataclass
class Problem:
    """A problem being judged: its text, sentence ends, prompt pieces and search state."""

    problem_id: str
    question: str
    answer: str
    cot: str
    ends: list[int]  # rstripped character end of each sentence (the judge sees cot[:ends[k-1]])
    num_judged: int
    prompt: ProblemPrompt | None
    state: SearchState
    probes: list[dict[str, Any]] = field(default_factory=list)
    calib: Calibrator | None = None  # set once the anchors are judged (absolute: at once)
    calib_status: str = (
        ""  # "" = calibrated; flat_margin / anchor_failed = the judge could not be calibrated
    )
    outcomes: dict[int, dict[str, Any]] = field(
        default_factory=dict
    )  # raw outcome per judged k, reused by later probes
    engine_error: str = (
        ""  # an engine call for this problem failed: it leaves as judge_engine_error, to be retried
    )
    known_cut: int = -1  # the known shortest sufficient prefix in sentences (-1: not known)

    @property
    def cot_truncated(self) -> bool:
        return self.num_judged < len(self.ends)


def sentence_ends(cot: str, mode: str, max_chars: int) -> list[int]:
    """End offsets of the sentences without trailing whitespace, so cot[:end] is what the judge sees."""
    from palign_ray.sentences import split_sentences  # the segmentation helper's module

    return [len(cot[:e].rstrip()) for _, e in split_sentences(cot, mode, max_chars)]  # type: ignore[arg-type]


def reserved_tokens(jcfg: JudgeConfig) -> int:
    """Tokens a probe generates: one in logprob mode, the decode budget in generate mode.

    Rollout probes generate up to align.max_tokens, cut to the room the prompt leaves (as align does):
    the prompt needs room for one.
    """
    return jcfg.max_new_tokens if jcfg.verdict == "generate" else 1


def judged_sentences(prompt: ProblemPrompt, ends: list[int], budget: int) -> int:
    """How many leading sentences fit `budget` CoT tokens (cut at a sentence boundary)."""
    # token counts grow with k, so the fitting sentences are a leading run
    n = 0
    while n < len(ends) and prompt.num_cot_tokens(ends[n]) <= budget:
        n += 1
    return n


def prepare_problem(
    row: dict[str, Any], builder: JudgePromptBuilder | None, jcfg: JudgeConfig, max_model_len: int
) -> Problem | dict[str, Any]:
    """A Problem, or a quarantine row naming why the row cannot be judged."""
    pid = str(row[R.PROBLEM_ID])
    question, cot = _text(row, R.QUESTION), _text(row, R.COT)
    for name, value in ((R.QUESTION, question), (R.COT, cot)):
        if value is None:
            return quarantine_row(
                STAGE, pid, f"empty_{name}", f"field {name!r} is missing, empty or whitespace-only"
            )
    if question is None or cot is None:  # returned above; says so to the type checker
        raise AssertionError
    ends = sentence_ends(cot, jcfg.segmentation, jcfg.max_sentence_chars)
    if not ends:
        return quarantine_row(STAGE, pid, "no_sentences", "segmentation found no sentence")
    answer = "" if row.get(R.ANSWER) is None else str(row.get(R.ANSWER))
    known = known_cut(row.get(KNOWN_INDEX), row.get(KNOWN_CHAR_END), ends)
    if jcfg.search == "fixed_ratio":  # no judging: no prompt, no token budget
        state = SearchState(len(ends), "fixed_ratio", fixed_ratio=jcfg.fixed_ratio)
        return Problem(pid, question, answer, cot, ends, len(ends), None, state, known_cut=known)
    assert builder is not None
    prompt = builder.build(question, cot)
    room = max_model_len - len(prompt.head) - len(prompt.tail) - reserved_tokens(jcfg)
    n = judged_sentences(prompt, ends, min(jcfg.max_cot_tokens, room))
    if n == 0:
        shortest = prompt.num_tokens(ends[0]) + reserved_tokens(jcfg)
        return quarantine_row(
            STAGE,
            pid,
            "prompt_too_long",
            f"{shortest} tokens with the shortest prefix > engine.max_model_len {max_model_len} "
            f"(or first sentence > judge.max_cot_tokens {jcfg.max_cot_tokens})",
        )
    state = SearchState(n, jcfg.search, kary_k=jcfg.kary_k)
    return Problem(pid, question, answer, cot, ends, n, prompt, state, known_cut=known)


def _text(row: dict[str, Any], name: str) -> str | None:
    """The field as text when it is a string with something in it, else None."""
    value = row.get(name)
    return value if isinstance(value, str) and value.strip() else None


def known_cut(index: Any, char_end: Any, ends: Sequence[int]) -> int:
    """Sentences up to and including the known decisive one (0-based `index`), or -1 when unknown.

    Where the data also gives the decisive sentence's end offset (built-in traces), the splitter must
    agree with it, so a trace segmented differently is never scored against the wrong sentence.
    """
    if index is None or isinstance(index, bool) or not isinstance(index, (int, float)):
        return -1
    if isinstance(index, float) and (math.isnan(index) or index != int(index)):
        return -1
    k = int(index) + 1
    if not 1 <= k <= len(ends):
        return -1
    if isinstance(char_end, (int, float)) and not isinstance(char_end, bool):
        if not math.isnan(char_end) and ends[k - 1] != int(char_end):
            return -1
    return k


def prefix_text(p: Problem, k: int) -> str:
    """The first k sentences of the problem's trace (k = 0: nothing)."""
    return p.cot[: p.ends[k - 1]] if k else ""


def prepare_rows(
    rows: Sequence[dict[str, Any]],
    builder: JudgePromptBuilder | None,
    jcfg: JudgeConfig,
    max_model_len: int,
) -> tuple[list[Problem], list[dict[str, Any]]]:
    """Problems to judge, and quarantine rows for those that cannot be."""
    problems: list[Problem] = []
    quarantined: list[dict[str, Any]] = []
    for row in rows:
        try:
            got = prepare_problem(row, builder, jcfg, max_model_len)
        except Exception as e:  # a malformed row must not take the batch down
            got = quarantine_row(STAGE, str(row.get(R.PROBLEM_ID)), "prepare_error", repr(e))
        (problems.append if isinstance(got, Problem) else quarantined.append)(got)  # type: ignore[arg-type]
    return problems, quarantined
