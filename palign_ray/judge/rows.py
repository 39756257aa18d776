"""A judged problem's output row: the cut (with the isotonic and fallback policies), its prefix, the
probe trace and token counts, and the rollout continuations align reuses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from palign_ray import records as R
from palign_ray.artifacts import quarantine_row
from palign_ray.config import JudgeConfig
from palign_ray.judge.audit import AUDIT, AUDIT_ROLLOUTS, KNOWN_CUT
from palign_ray.judge.calibration import Calibrator, contradictions, isotonic_cut
from palign_ray.judge.contract import STAGE
from palign_ray.judge.probes import effective_threshold
from palign_ray.judge.problem import Problem
from palign_ray.judge.rollout import ROLLOUT_CONTINUATIONS, ROLLOUT_K
from palign_ray.judge.search import fixed_ratio_k

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
