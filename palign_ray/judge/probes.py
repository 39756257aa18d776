"""One probe: its sampling, its engine result read as a verdict and scores, and calibration of the
logprob margins against the anchors."""

from __future__ import annotations

from typing import Any

from palign_ray.config import JudgeConfig
from palign_ray.engines.base import GenerationResult, SamplingSpec
from palign_ray.judge.calibration import Calibrator, margin
from palign_ray.judge.problem import Problem
from palign_ray.judge.prompts import (
    JudgePromptBuilder,
    VerdictTokens,
    generated_verdict,
    logprob_score,
    verdict_tokens,
)
from palign_ray.judge.search import majority

RAW_CHARS = 200  # judge output kept per probe in generate mode


def judge_tools(tokenizer: Any, jcfg: JudgeConfig) -> tuple[JudgePromptBuilder, VerdictTokens]:
    vt = verdict_tokens(tokenizer)
    prefill = vt.common if jcfg.verdict == "logprob" else ()
    return JudgePromptBuilder(tokenizer, jcfg.prompt_version, prefill), vt


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
