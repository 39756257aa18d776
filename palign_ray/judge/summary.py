"""The truncate stage's part summary: counts, the cut distribution, rounds and probes against the
binary bound, degeneracy, tokens and cache shares."""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from palign_ray import records as R
from palign_ray.config import JudgeConfig
from palign_ray.judge.calibration import degeneracy

log = logging.getLogger(__name__)


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
