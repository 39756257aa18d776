"""Batched sufficiency rounds: a Ray Data actor pool of vLLM judges, plus the paper-reference serial mode.

Each actor owns one engine. For a batch of problems it builds one search state per problem and loops
rounds: the next probes of every unresolved problem go to the engine in ONE generate call, the
verdicts update the states, and the loop ends when all are resolved. All probes of a problem go to
the same engine with token-id prompts that share the problem's prefix, so vLLM's prefix cache serves
the template head, question and CoT tokens of later rounds (see palign_ray.judge.prompts).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from palign_ray import records as R
from palign_ray.artifacts import quarantine_row
from palign_ray.config import EngineConfig, JudgeConfig
from palign_ray.engines.base import Engine, GenerationResult, SamplingSpec
from palign_ray.generation import derive_seed
from palign_ray.judge.audit import AUDIT, AUDIT_ROLLOUTS, KNOWN_CUT, audit_schema
from palign_ray.judge.calibration import (
    CALIBRATIONS,
    Calibrator,
    anchor_ks,
    contradictions,
    degeneracy,
    isotonic_cut,
    margin,
)
from palign_ray.judge.prompts import (
    JudgePromptBuilder,
    ProblemPrompt,
    VerdictTokens,
    generated_verdict,
    logprob_score,
    verdict_tokens,
)
from palign_ray.judge.rollout import ROLLOUT_CONTINUATIONS, ROLLOUT_K
from palign_ray.judge.search import SearchState, fixed_ratio_k, majority

log = logging.getLogger(__name__)

STAGE = "truncate"
# Extra columns the actor returns besides the output row (dropped by the driver).
_Q_REASON, _Q_DETAIL, _TRACE_JSON, _BATCH_KEY, _BATCH_CALLS, _BATCH_S = (
    "_quarantine_reason",
    "_quarantine_detail",
    "_probe_trace_json",
    "_batch_key",
    "_batch_engine_calls",
    "_batch_judge_s",
)
RAW_CHARS = 200  # judge output kept per probe in generate mode
TRACE_SOURCE = "trace_source"  # the teacher stage's column: teacher | reference | ingested
DECISIVE_SENTENCE = (
    "decisive_sentence"  # built-in traces: the known cut's column (judge.known_cut_field)
)
KNOWN_CHAR_END = "decisive_char_end"  # and where that sentence ends, checked against the splitter
KNOWN_INDEX = "known_index"  # checked input rows: judge.known_cut_field's value (0-based sentence)

OUTPUT_COLUMNS: tuple[str, ...] = (
    R.PROBLEM_ID,
    R.QUESTION,
    R.ANSWER,
    R.COT,
    "num_sentences",
    "num_judged_sentences",
    "prefix_sentences",
    "prefix_char_end",
    "prefix_ratio_sentences",
    "prefix_ratio_chars",
    R.PREFIX,
    "is_sufficient",
    "non_monotone",
    "search",
    "verdict_mode",
    "calibration",
    "threshold",
    "segmentation",
    "judge_model",
    "prompt_version",
    "num_probes",
    "num_rounds",
    "prompt_tokens",
    "cached_tokens",
    "generated_tokens",
    "num_unparseable",
    "num_judge_errors",
    "cot_truncated",
    "isotonic",
    "calibration_status",
    "calibration_m0",
    "calibration_mn",
    "num_calibration_probes",
    "num_contradictions",
    "probe_trace",
    KNOWN_CUT,
    AUDIT,
    AUDIT_ROLLOUTS,
    ROLLOUT_K,
    ROLLOUT_CONTINUATIONS,
)


def output_schema() -> Any:
    """Arrow schema of the output Parquet (the column names and types are a contract)."""
    import pyarrow as pa

    probe = pa.struct(
        [
            ("round", pa.int32()),
            ("k", pa.int32()),
            ("verdict", pa.bool_()),
            ("p_enough", pa.float64()),
            ("logprob_enough", pa.float64()),
            ("logprob_not_enough", pa.float64()),
            ("score", pa.float64()),
            ("anchor", pa.bool_()),
            ("votes", pa.list_(pa.bool_())),
            ("parseable", pa.bool_()),
            ("error", pa.string()),
            ("prompt_tokens", pa.int32()),
            ("cached_tokens", pa.int32()),
            ("generated_tokens", pa.int32()),
            ("raw", pa.string()),
        ]
    )
    s, i, f, b = pa.string(), pa.int32(), pa.float64(), pa.bool_()
    audit, rollouts = audit_schema()
    types = {
        "num_sentences": i,
        "num_judged_sentences": i,
        "prefix_sentences": i,
        "prefix_char_end": i,
        "prefix_ratio_sentences": f,
        "prefix_ratio_chars": f,
        "is_sufficient": b,
        "non_monotone": b,
        "threshold": f,
        "num_probes": i,
        "num_rounds": i,
        "prompt_tokens": pa.int64(),
        "cached_tokens": pa.int64(),
        "generated_tokens": pa.int64(),
        "num_unparseable": i,
        "num_judge_errors": i,
        "cot_truncated": b,
        "isotonic": b,
        "calibration_m0": f,
        "calibration_mn": f,
        "num_calibration_probes": i,
        "num_contradictions": i,
        "probe_trace": pa.list_(probe),
        KNOWN_CUT: i,
        AUDIT: audit,
        AUDIT_ROLLOUTS: rollouts,
        ROLLOUT_K: i,
        ROLLOUT_CONTINUATIONS: rollouts,
    }
    return pa.schema([(c, types.get(c, s)) for c in OUTPUT_COLUMNS])


def check_judge_config(jcfg: JudgeConfig) -> None:
    """Fail before any engine starts on settings that cannot work (names the key and the fix)."""
    if jcfg.calibration not in CALIBRATIONS:
        raise ValueError(
            f"judge.calibration={jcfg.calibration!r} is not one of {list(CALIBRATIONS)}"
        )
    if (
        jcfg.calibration != "absolute"
        and jcfg.search != "fixed_ratio"
        and (jcfg.verdict != "logprob" or jcfg.votes != 1)
    ):
        raise ValueError(
            f"judge.calibration={jcfg.calibration} needs judge.verdict=logprob and judge.votes=1 "
            "(it compares margins, not sampled votes); or use judge.calibration=absolute"
        )
    if jcfg.isotonic and jcfg.search != "fixed_ratio" and jcfg.verdict != "logprob":
        # generate verdicts carry no score, so the fit would have no points and every cut would be discarded
        raise ValueError(
            "judge.isotonic=true needs judge.verdict=logprob (it fits the probes' p(ENOUGH) scores, "
            "which generated verdicts lack); set judge.isotonic=false or judge.verdict=logprob"
        )
    if jcfg.min_margin_range < 0:
        raise ValueError(f"judge.min_margin_range must be >= 0, got {jcfg.min_margin_range}")
    if jcfg.votes < 1:
        raise ValueError(f"judge.votes must be >= 1, got {jcfg.votes}")
    if not 0 <= jcfg.kv_admission <= 1:
        raise ValueError(
            f"judge.kv_admission must be a share of the KV cache in [0, 1] (0 = off), got {jcfg.kv_admission}"
        )
    if jcfg.verdict == "rollout" and jcfg.votes != 1:
        raise ValueError(
            "judge.verdict=rollout samples judge.rollout_samples continuations per probe; "
            "set judge.votes=1"
        )
    if jcfg.votes > 1 and jcfg.temperature <= 0:
        raise ValueError("judge.votes > 1 needs judge.temperature > 0 (greedy votes are identical)")
    if not 0.0 <= jcfg.threshold <= 1.0:
        raise ValueError(f"judge.threshold must be in [0, 1], got {jcfg.threshold}")
    if jcfg.max_cot_tokens < 1 or jcfg.max_new_tokens < 1:
        raise ValueError("judge.max_cot_tokens and judge.max_new_tokens must be >= 1")


def reference_config(jcfg: JudgeConfig) -> JudgeConfig:
    """Paper-reference mode: the paper's binary search with decode-and-parse verdicts."""
    return dataclasses.replace(
        jcfg, search="binary", verdict="generate", calibration="absolute", isotonic=False
    )


# ---- per-problem preparation ------------------------------------------------------------------


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


# ---- one round ---------------------------------------------------------------------------------


def probe_spec(
    jcfg: JudgeConfig, vt: VerdictTokens, num_prompt_tokens: int, max_model_len: int, seed: int
) -> SamplingSpec:
    sampled = jcfg.votes > 1 or jcfg.temperature > 0
    common: dict[str, Any] = dict(
        n=jcfg.votes,
        temperature=jcfg.temperature if sampled else 0.0,
        seed=seed if sampled else None,
    )
    if jcfg.verdict == "logprob":
        pair = (vt.enough_id, vt.not_enough_id)
        # allowed_token_ids makes each vote one of the two verdicts; logprob_token_ids returns both raw logprobs.
        return SamplingSpec(
            max_tokens=1, logprobs=2, allowed_token_ids=pair, logprob_token_ids=pair, **common
        )
    return SamplingSpec(
        max_tokens=max(1, min(jcfg.max_new_tokens, max_model_len - num_prompt_tokens)), **common
    )


def judge_result(res: GenerationResult, jcfg: JudgeConfig, vt: VerdictTokens) -> dict[str, Any]:
    """Verdict, votes and scores of one probe's engine result (policy applied to unparseable outputs)."""
    out: dict[str, Any] = {
        "p_enough": None,
        "logprob_enough": None,
        "logprob_not_enough": None,
        "score": None,
        "anchor": False,
        "raw": "",
        "error": "",
    }
    if jcfg.verdict == "logprob":
        score = logprob_score(
            res.completions[0].logprobs[0] if res.completions[0].logprobs else None, vt
        )
        if score is None:
            votes, parseable = [jcfg.unparseable == "enough"], False
            out["error"] = "no_verdict_logprobs"
        else:
            out.update(
                p_enough=score.p_enough,
                logprob_enough=score.logprob_enough,
                logprob_not_enough=score.logprob_not_enough,
                score=score.p_enough,
            )
            if jcfg.votes > 1:
                votes = [
                    bool(c.token_ids) and c.token_ids[0] == vt.enough_id for c in res.completions
                ]
            else:
                votes = [score.p_enough >= jcfg.threshold]
            parseable = True
    else:
        parsed = [generated_verdict(c.text, jcfg.unparseable) for c in res.completions]
        votes, parseable = [v for v, _ in parsed], all(ok for _, ok in parsed)
        out["raw"] = res.completions[0].text[:RAW_CHARS] if res.completions else ""
    out.update(verdict=majority(votes), votes=votes, parseable=parseable)
    return out


def error_outcome(jcfg: JudgeConfig, err: str) -> dict[str, Any]:
    """A failed probe counts by the unparseable policy (the paper: an error is NOT_ENOUGH)."""
    v = jcfg.unparseable == "enough"
    return {
        "p_enough": None,
        "logprob_enough": None,
        "logprob_not_enough": None,
        "score": None,
        "anchor": False,
        "raw": "",
        "error": err[:200],
        "verdict": v,
        "votes": [v],
        "parseable": False,
    }


def effective_threshold(jcfg: JudgeConfig) -> float:
    """The threshold on the mode's score scale (contextual compares a logit margin)."""
    return jcfg.contextual_threshold if jcfg.calibration == "contextual" else jcfg.threshold


def _margin_of(o: dict[str, Any]) -> float | None:
    if o["logprob_enough"] is None or o["logprob_not_enough"] is None:
        return None
    return margin(o["logprob_enough"], o["logprob_not_enough"])


def calibrate(p: Problem, jcfg: JudgeConfig) -> None:
    """Set the problem's calibrator from its anchor outcomes (k=0 and, for relative, k=n)."""
    thr = effective_threshold(jcfg)
    if jcfg.calibration == "absolute" or jcfg.verdict != "logprob":
        p.calib = Calibrator("absolute", thr)
        return
    m0 = _margin_of(p.outcomes[0])
    mn = _margin_of(p.outcomes[p.num_judged]) if jcfg.calibration == "relative" else None
    p.calib = Calibrator(jcfg.calibration, thr, m0, mn, jcfg.min_margin_range)
    if m0 is None or (jcfg.calibration == "relative" and mn is None):
        p.calib_status = "anchor_failed"
    elif p.calib.flat:
        p.calib_status = "flat_margin"


def decide(o: dict[str, Any], calib: Calibrator, jcfg: JudgeConfig) -> dict[str, Any]:
    """The probe outcome with its calibrated score and verdict (absolute keeps judge_result's verdict and votes)."""
    if calib.mode == "absolute":
        return dict(o)
    m = _margin_of(o)
    score = calib.score(o["p_enough"], m) if m is not None and o["p_enough"] is not None else None
    v = calib.verdict(score)
    return dict(o, score=score, verdict=v, votes=[v])


def _round_probes(p: Problem, jcfg: JudgeConfig) -> tuple[list[int], list[int]]:
    """(anchor ks to judge now, search ks of the new round); anchors only before the first round."""
    anchors = (
        [k for k in anchor_ks(jcfg.calibration, p.num_judged) if k not in p.outcomes]
        if p.calib is None
        else []
    )
    return anchors, p.state.next_probes()


class RoundLoop:
    """The round loop without I/O: `next_call` gives the probes of the next engine call, `record` its results.

    Calibration anchors (empty prefix, full trace) go into the same engine call as round 1; a prefix
    judged before (e.g. the full-trace anchor) is reused, never sent twice. The sync (`run_rounds`) and
    async (`arun_rounds`) drivers differ only in how they call the engine.
    """

    def __init__(
        self,
        problems: Sequence[Problem],
        jcfg: JudgeConfig,
        vt: VerdictTokens,
        max_model_len: int,
        seed: int = 0,
        prober: Any = None,
    ):
        self.problems = problems
        self.prober = prober  # judge.rollout.RolloutProber for verdict=rollout, else None
        self.jcfg = (
            dataclasses.replace(jcfg, calibration="absolute") if jcfg.verdict != "logprob" else jcfg
        )
        self.vt, self.max_model_len, self.seed = vt, max_model_len, seed
        self.calls = 0
        self._plan: list[tuple[Problem, list[int], list[int]]] = []

    def next_call(
        self,
    ) -> tuple[list[tuple[Problem, int]], list[list[int]], list[SamplingSpec]] | None:
        """(probes, prompt ids, sampling specs) of the next engine call; None when every search is done."""
        while True:
            self._plan = [
                (p, *_round_probes(p, self.jcfg))
                for p in self.problems
                if not p.state.done and not p.engine_error
            ]
            if not self._plan:
                return None
            todo: list[tuple[Problem, int]] = []
            seen: set[tuple[int, int]] = set()
            for p, anchors, ks in self._plan:
                for k in (*anchors, *ks):
                    if k not in p.outcomes and (id(p), k) not in seen:
                        seen.add((id(p), k))
                        todo.append((p, k))
            if todo and self.prober is not None:
                prompts = [self.prober.ids(p.question, _prefix(p, k)) for p, k in todo]
                specs = [
                    self.prober.spec(
                        len(ids),
                        self.max_model_len,
                        derive_seed(self.seed, p.problem_id, f"judge:{k}"),
                    )
                    for ids, (p, k) in zip(prompts, todo, strict=True)
                ]
                return todo, prompts, specs
            if todo:
                prompts = [p.prompt.ids(p.ends[k - 1] if k else 0) for p, k in todo]  # type: ignore[union-attr]
                specs = [
                    probe_spec(
                        self.jcfg,
                        self.vt,
                        len(ids),
                        self.max_model_len,
                        derive_seed(self.seed, p.problem_id, f"judge:{k}"),
                    )
                    for ids, (p, k) in zip(prompts, todo, strict=True)
                ]
                return todo, prompts, specs
            self._apply()  # every probe of this round was judged before (anchors): no engine call

    def record(
        self,
        todo: list[tuple[Problem, int]],
        prompts: list[list[int]],
        results: Sequence[GenerationResult] | None,
        error: str = "",
    ) -> None:
        """Results of one engine call (None: the call failed, and its problems stop with `engine_error`)."""
        self.calls += 1
        if results is None:
            for (
                p,
                _,
            ) in todo:  # these problems are out of the search; they leave as judge_engine_error
                p.engine_error = error or "engine call failed"
            return
        for (p, k), res in zip(todo, results, strict=True):
            o = (
                judge_result(res, self.jcfg, self.vt)
                if self.prober is None
                else self.prober.outcome(res, p.problem_id, p.question, p.answer, _prefix(p, k))
            )
            o.update(
                prompt_tokens=res.num_prompt_tokens,
                cached_tokens=res.num_cached_tokens,
                generated_tokens=res.num_generated_tokens,
            )
            p.outcomes[k] = o
        self._apply()

    def _apply(self) -> None:
        jcfg = self.jcfg
        for p, anchors, ks in self._plan:
            for k in anchors:
                p.probes.append(dict(p.outcomes[k], round=p.state.round, k=k, anchor=True))
            if p.calib is None:
                calibrate(p, jcfg)
            assert p.calib is not None
            for k in ks:
                o = decide(p.outcomes[k], p.calib, jcfg)
                if k in anchor_ks(
                    jcfg.calibration, p.num_judged
                ):  # judged as an anchor: tokens counted there
                    o.update(prompt_tokens=0, cached_tokens=0, generated_tokens=0)
                o.update(round=p.state.round, k=k, anchor=False)
                p.probes.append(o)
                p.state.record(k, o["verdict"], o["score"], o["votes"])
            if p.calib_status:  # uncalibratable judge: stop searching, keep the full trace
                p.state.stop()


def _prefix(p: Problem, k: int) -> str:
    """The first k sentences of the problem's trace (k = 0: nothing)."""
    return p.cot[: p.ends[k - 1]] if k else ""


def run_rounds(
    engine: Engine,
    problems: Sequence[Problem],
    jcfg: JudgeConfig,
    vt: VerdictTokens,
    max_model_len: int,
    seed: int = 0,
    prober: Any = None,
) -> int:
    """Advance every problem's search to the end, one engine call per round; returns the calls made."""
    loop = RoundLoop(problems, jcfg, vt, max_model_len, seed, prober)
    while (call := loop.next_call()) is not None:
        todo, prompts, specs = call
        try:
            results: Sequence[GenerationResult] | None = engine.generate(prompts, specs)
            err = ""
        except Exception as e:  # noqa: BLE001 - the problems are retried (judge_engine_error), never guessed
            log.warning("judge engine call failed (%d probes): %r", len(prompts), e)
            results, err = None, f"engine_error: {e!r}"
        loop.record(todo, prompts, results, err)
    return loop.calls


def resident_tokens(p: Problem, jcfg: JudgeConfig, block_size: int) -> int:
    """A problem's footprint in the judge engine's KV cache while it is searched (judge.admission).

    Its probes share its prompt up to their cuts, so the longest one (the whole judged trace) bounds
    what they share; each sequence of a round adds its private last block, its verdict tail and
    what it generates (a rollout probe: `rollout_samples` continuations).
    """
    if p.prompt is None:
        return 0
    longest = p.prompt.num_tokens(p.ends[p.num_judged - 1])
    per_round = {"binary": 1, "kary": jcfg.kary_k}.get(jcfg.search, p.num_judged)
    sequences = per_round + len(anchor_ks(jcfg.calibration, p.num_judged))
    if jcfg.verdict == "rollout":
        sequences *= jcfg.rollout_samples
    elif jcfg.votes > 1:
        sequences *= jcfg.votes
    return longest + sequences * (block_size + len(p.prompt.tail) + reserved_tokens(jcfg))


async def arun_rounds(
    engine: Any,
    problems: Sequence[Problem],
    jcfg: JudgeConfig,
    vt: VerdictTokens,
    max_model_len: int,
    seed: int = 0,
    prober: Any = None,
    on_done: Callable[[Problem], None] | None = None,
) -> int:
    """`run_rounds` on an async engine: while this batch waits for a round, other batches' probes fill
    the engine. `on_done` is called once per problem as its search ends (admission frees its room)."""
    loop = RoundLoop(problems, jcfg, vt, max_model_len, seed, prober)
    searching = {id(p): p for p in problems}  # by identity: two problems may hold equal fields
    try:
        while (call := loop.next_call()) is not None:
            await _one_call(engine, loop, call, prober)
            if on_done is not None:
                for key, p in list(searching.items()):
                    if p.state.done or p.engine_error:
                        del searching[key]
                        on_done(p)
    finally:
        if on_done is not None:  # the rest (after an error, or done without a call) leave too
            for p in searching.values():
                on_done(p)
    return loop.calls


async def _one_call(engine: Any, loop: RoundLoop, call: Any, prober: Any) -> None:
    import asyncio

    todo, prompts, specs = call
    try:
        results: Sequence[GenerationResult] | None = await engine.agenerate(prompts, specs)
        err = ""
    except Exception as e:  # noqa: BLE001 - the problems are retried (judge_engine_error), never guessed
        log.warning("judge engine call failed (%d probes): %r", len(prompts), e)
        results, err = None, f"engine_error: {e!r}"
    if prober is not None:  # rollout verdicts grade with math-verify: off the event loop
        await asyncio.to_thread(loop.record, todo, prompts, results, err)
    else:
        loop.record(todo, prompts, results, err)


# ---- output rows -------------------------------------------------------------------------------


def problem_row(p: Problem, jcfg: JudgeConfig, judge_model: str) -> dict[str, Any]:
    """The output row of a finished problem (the fallback keeps the whole CoT, not just the judged part)."""
    r = p.state.result()
    n_all = len(p.ends)
    k = r.k if (r.is_sufficient or jcfg.search == "fixed_ratio") else n_all
    sufficient = r.is_sufficient
    search = [x for x in p.probes if not x["anchor"]]
    if jcfg.isotonic and jcfg.search != "fixed_ratio" and not p.calib_status:
        cut = isotonic_cut(_score_points(p, jcfg), effective_threshold(jcfg))
        k, sufficient = (cut, True) if cut is not None else (n_all, False)
    if (
        p.calib_status and jcfg.flat_fallback == "fixed_ratio"
    ):  # stated policy, flagged by calibration_status
        k, sufficient = fixed_ratio_k(n_all, jcfg.fixed_ratio), False
    end = p.ends[k - 1]
    calib = p.calib or Calibrator(jcfg.calibration, effective_threshold(jcfg))
    nan = float("nan")
    tot = lambda key: int(sum(x[key] for x in p.probes))  # noqa: E731
    return {
        R.PROBLEM_ID: p.problem_id,
        R.QUESTION: p.question,
        R.ANSWER: p.answer,
        R.COT: p.cot,
        "num_sentences": n_all,
        "num_judged_sentences": p.num_judged,
        "prefix_sentences": k,
        "prefix_char_end": end,
        "prefix_ratio_sentences": k / n_all,
        "prefix_ratio_chars": end / len(p.cot),
        R.PREFIX: p.cot[:end],
        "is_sufficient": sufficient,
        "non_monotone": r.non_monotone,
        "search": jcfg.search,
        "verdict_mode": "none" if jcfg.search == "fixed_ratio" else jcfg.verdict,
        "calibration": jcfg.calibration,
        "threshold": effective_threshold(jcfg),
        "segmentation": jcfg.segmentation,
        "judge_model": judge_model,
        "prompt_version": jcfg.prompt_version,
        "num_probes": r.num_probes,
        "num_rounds": r.num_rounds,
        "prompt_tokens": tot("prompt_tokens"),
        "cached_tokens": tot("cached_tokens"),
        "generated_tokens": tot("generated_tokens"),
        "num_unparseable": sum(not x["parseable"] and not x["error"] for x in p.outcomes.values()),
        "num_judge_errors": sum(bool(x["error"]) for x in p.outcomes.values()),
        "cot_truncated": p.cot_truncated,
        "isotonic": jcfg.isotonic,
        "calibration_status": p.calib_status,
        "calibration_m0": nan if calib.m0 is None else calib.m0,
        "calibration_mn": nan if calib.mn is None else calib.mn,
        "num_calibration_probes": len(p.probes) - len(search),
        "num_contradictions": contradictions([(x["k"], x["verdict"]) for x in search]),
        "probe_trace": [{key: x[key] for key in _PROBE_KEYS} for x in p.probes],
        KNOWN_CUT: p.known_cut,
        AUDIT: None,  # filled by the audit for the sampled problems (palign_ray.judge.audit)
        AUDIT_ROLLOUTS: None,
        **kept_continuations(p, k, sufficient),
    }


def kept_continuations(p: Problem, k: int, sufficient: bool) -> dict[str, Any]:
    """verdict=rollout: the continuations from the final cut, which align reuses (none when the cut was
    not probed sufficient, e.g. the whole-trace fallback)."""
    o = p.outcomes.get(k)
    if not sufficient or o is None or "continuations" not in o or not o["verdict"]:
        return {ROLLOUT_K: -1, ROLLOUT_CONTINUATIONS: None}
    return {ROLLOUT_K: k, ROLLOUT_CONTINUATIONS: [dict(c, k=k) for c in o["continuations"]]}


def _score_points(p: Problem, jcfg: JudgeConfig) -> list[tuple[int, float]]:
    """(k, score) of the search probes plus the anchors' known scores (relative: 0 at k=0, 1 at k=n)."""
    pts = {x["k"]: x["score"] for x in p.probes if not x["anchor"] and x["score"] is not None}
    if jcfg.calibration == "relative":
        pts.setdefault(0, 0.0)
        pts.setdefault(p.num_judged, 1.0)
    elif jcfg.calibration == "contextual":
        pts.setdefault(0, 0.0)
    return sorted(pts.items())


_PROBE_KEYS = (
    "round",
    "k",
    "verdict",
    "p_enough",
    "logprob_enough",
    "logprob_not_enough",
    "score",
    "anchor",
    "votes",
    "parseable",
    "error",
    "prompt_tokens",
    "cached_tokens",
    "generated_tokens",
    "raw",
)


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


def finished_rows(
    problems: Sequence[Problem], jcfg: JudgeConfig, judge_model: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Output rows of judged problems; a problem whose engine call failed is quarantined as judge_engine_error.

    That reason is retryable: the stage never commits such a row, so the problem is judged again.
    """
    out = [problem_row(p, jcfg, judge_model) for p in problems if not p.engine_error]
    failed = [
        quarantine_row(STAGE, p.problem_id, "judge_engine_error", p.engine_error)
        for p in problems
        if p.engine_error
    ]
    return out, failed


def judge_rows(
    engine: Engine | None,
    builder: JudgePromptBuilder | None,
    vt: VerdictTokens | None,
    rows: Sequence[dict[str, Any]],
    jcfg: JudgeConfig,
    engine_cfg: EngineConfig,
    judge_model: str,
    seed: int,
    prober: Any = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """Judge a batch of input rows together on a sync engine: (output rows, quarantine rows, engine calls)."""
    problems, quarantined = prepare_rows(rows, builder, jcfg, engine_cfg.max_model_len)
    calls = 0
    if problems and jcfg.search != "fixed_ratio":
        assert engine is not None and vt is not None
        calls = run_rounds(engine, problems, jcfg, vt, engine_cfg.max_model_len, seed, prober)
    out, failed = finished_rows(problems, jcfg, judge_model)
    return out, quarantined + failed, calls


def judge_tools(tokenizer: Any, jcfg: JudgeConfig) -> tuple[JudgePromptBuilder, VerdictTokens]:
    vt = verdict_tokens(tokenizer)
    prefill = vt.common if jcfg.verdict == "logprob" else ()
    return JudgePromptBuilder(tokenizer, jcfg.prompt_version, prefill), vt


def check_input(
    rows: Iterable[dict[str, Any]], known_cut_field: str = ""
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Driver-side checks that need no model: ids present and unique, question and CoT non-empty strings.

    `known_cut_field` (judge.known_cut_field) is carried as the known cut, except on teacher samples:
    a known decisive sentence belongs to the reference trace, not to a trace the teacher wrote.
    """
    ok: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, row in enumerate(rows):
        pid = row.get(R.PROBLEM_ID)
        pid = str(pid) if pid is not None and str(pid) != "" else f"row-{i}"
        if pid in seen:
            bad.append(
                quarantine_row(
                    STAGE, pid, "duplicate_problem_id", f"row {i} repeats problem_id {pid!r}"
                )
            )
            continue
        seen.add(pid)
        reason = next(
            (
                f"empty_{c}"
                for c in (R.QUESTION, R.COT)
                if not isinstance(row.get(c), str) or not row[c].strip()
            ),
            "",
        )
        if reason:
            bad.append(
                quarantine_row(
                    STAGE, pid, reason, f"field {reason[6:]!r} is missing, empty or whitespace-only"
                )
            )
            continue
        ans = row.get(R.ANSWER)
        own = bool(known_cut_field) and row.get(TRACE_SOURCE) != "teacher"
        checked = (
            KNOWN_INDEX in row
        )  # rows checked before (the in-memory path checks on both sides)
        ok.append(
            {
                R.PROBLEM_ID: pid,
                R.QUESTION: row[R.QUESTION],
                R.COT: row[R.COT],
                R.ANSWER: "" if ans is None else str(ans),
                KNOWN_INDEX: row[KNOWN_INDEX]
                if checked
                else (row.get(known_cut_field) if own else None),
                KNOWN_CHAR_END: row.get(KNOWN_CHAR_END)
                if checked or (own and known_cut_field == DECISIVE_SENTENCE)
                else None,
            }
        )
    return ok, bad


# ---- summary -----------------------------------------------------------------------------------


def quantiles(
    values: Sequence[float], qs: Sequence[float] = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
) -> dict[str, float]:
    """Linear-interpolated quantiles plus the mean (pure Python; empty → {})."""
    if not values:
        return {}
    v = sorted(values)
    out = {}
    for q in qs:
        pos = q * (len(v) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(v) - 1)
        out[f"p{int(round(q * 100))}"] = v[lo] + (v[hi] - v[lo]) * (pos - lo)
    out["mean"] = sum(v) / len(v)
    return out


def summarize(
    out: list[dict[str, Any]],
    bad: list[dict[str, Any]],
    num_input: int,
    wall_s: float,
    jcfg: JudgeConfig,
    *,
    paper_reference: bool,
    engine_calls: int,
    judge_s: float,
) -> dict[str, Any]:
    """Counts, prefix-ratio distribution, rounds and probes against the binary bound, token and cache shares."""
    reasons = dict(Counter(str(q[R.REASON]) for q in bad))
    probes = [p for r in out for p in r["probe_trace"] if not p.get("anchor")]
    prompt = sum(r["prompt_tokens"] for r in out)
    cached = sum(r["cached_tokens"] for r in out)
    within = sum(r["num_probes"] <= r["num_judged_sentences"].bit_length() for r in out)
    enough_share = sum(p["verdict"] for p in probes) / len(probes) if probes else 0.0
    by_round: dict[int, list[bool]] = {}
    for pr in probes:
        by_round.setdefault(int(pr["round"]), []).append(bool(pr["verdict"]))
    first = sum(r["prefix_sentences"] == 1 for r in out) / len(out) if out else 0.0
    full = sum(r["prefix_sentences"] == r["num_sentences"] for r in out) / len(out) if out else 0.0
    judged = [
        r for r in out if r["num_sentences"] > 1
    ]  # a one-sentence trace is both first and full
    first_j = sum(r["prefix_sentences"] == 1 for r in judged) / len(judged) if judged else 0.0
    full_j = (
        sum(r["prefix_sentences"] == r["num_sentences"] for r in judged) / len(judged)
        if judged
        else 0.0
    )
    degenerate = (
        []
        if jcfg.search == "fixed_ratio"
        else degeneracy(
            enough_share,
            len(probes),
            [r["prefix_ratio_sentences"] for r in judged],
            first_j,
            full_j,
        )
    )
    if degenerate:
        # A judge that (almost) always answers the same cuts every trace at the first sentence or keeps it whole.
        log.warning(
            "degenerate judge (calibration=%s): %s; the cuts say little (see judge.calibration)",
            jcfg.calibration,
            "; ".join(degenerate),
        )
    return {
        "num_input": num_input,
        "num_output": len(out),
        "num_quarantined": len(bad),
        "quarantine_reasons": reasons,
        "num_sufficient": sum(r["is_sufficient"] for r in out),
        "num_non_monotone": sum(r["non_monotone"] for r in out),
        "num_cot_truncated": sum(r["cot_truncated"] for r in out),
        "search": jcfg.search,
        "verdict_mode": jcfg.verdict,
        "paper_reference": paper_reference,
        "judge_model": jcfg.model,
        "prompt_version": jcfg.prompt_version,
        "threshold": jcfg.threshold,
        "prefix_ratio_sentences": quantiles([r["prefix_ratio_sentences"] for r in out]),
        "prefix_ratio_chars": quantiles([r["prefix_ratio_chars"] for r in out]),
        "num_sentences": quantiles([r["num_sentences"] for r in out]),
        "num_judged_sentences": quantiles([r["num_judged_sentences"] for r in out]),
        "rounds_per_problem": quantiles([r["num_rounds"] for r in out]),
        "probes_per_problem": quantiles([r["num_probes"] for r in out]),
        "binary_bound_per_problem": quantiles(
            [r["num_judged_sentences"].bit_length() for r in out]
        ),
        "num_within_binary_bound": within,
        "num_probes": len(probes),
        "num_enough_verdicts": sum(p["verdict"] for p in probes),
        "enough_share": enough_share,
        "enough_share_by_round": {str(k): sum(v) / len(v) for k, v in sorted(by_round.items())},
        "share_cut_at_first_sentence": first,
        "share_cut_at_full_trace": full,
        "degenerate": degenerate,
        "calibration": jcfg.calibration,
        "isotonic": jcfg.isotonic,
        "num_calibration_probes": sum(r.get("num_calibration_probes", 0) for r in out),
        "calibration_status": {
            s: sum(r.get("calibration_status") == s for r in out)
            for s in sorted({r.get("calibration_status") or "ok" for r in out} - {"ok"})
        },
        "num_contradictions": sum(r.get("num_contradictions", 0) for r in out),
        "num_unparseable": sum(r["num_unparseable"] for r in out),
        "num_judge_errors": sum(r["num_judge_errors"] for r in out),
        "engine_calls": engine_calls,
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "cache_hit_share": (cached / prompt) if prompt else 0.0,
        "generated_tokens": sum(r["generated_tokens"] for r in out),
        "judge_s": round(judge_s, 3),
        "wall_s": round(wall_s, 3),
    }
