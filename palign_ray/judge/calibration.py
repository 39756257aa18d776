"""Calibrated sufficiency verdicts from verdict-token logprobs, isotonic smoothing and degeneracy checks (pure).

A small judge is biased: SmolLM2-135M gives p("EN") ≈ 0.20 vs p("NOT") ≈ 0.02 whatever the prefix, so
an absolute threshold says ENOUGH everywhere. The margin m(k) = log p(ENOUGH) − log p(NOT_ENOUGH) of
prefix k still moves with the prefix, so we compare it with the same judge's margin on anchors of the
same problem:

- absolute:   score = p(ENOUGH) (two-token softmax); ENOUGH iff score ≥ judge.threshold.
- contextual: score = m(k) − m(0), m(0) = margin with an empty "Partial reasoning"; ENOUGH iff
  score ≥ judge.contextual_threshold (a logit margin, default 0: "more confident than with nothing").
- relative:   score = (m(k) − m(0)) / (m(n) − m(0)), n = the full judged trace; ENOUGH iff score ≥
  judge.threshold. When m(n) − m(0) ≤ judge.min_margin_range the judge cannot tell the full trace
  from nothing: the problem keeps its full trace, is_sufficient=False, reason "flat_margin".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

CALIBRATIONS: tuple[str, ...] = ("absolute", "contextual", "relative")
FLAT_MARGIN = "flat_margin"


def anchor_ks(calibration: str, n: int) -> tuple[int, ...]:
    """Prefix lengths probed in round 1 as anchors: 0 = empty reasoning, n = the full judged trace."""
    if calibration == "contextual":
        return (0,)
    if calibration == "relative":
        return (0, n)
    return ()


@dataclass(frozen=True)
class Calibrator:
    """Turns a probe's raw logprobs into (score, verdict) for one problem, given its anchor margins."""

    mode: str
    threshold: float  # p scale (absolute), normalised scale (relative), logit margin (contextual)
    m0: float | None = None
    mn: float | None = None
    min_range: float = 0.1

    @property
    def flat(self) -> bool:
        """relative only: the full-trace margin is not above the empty-prefix margin by min_range."""
        return self.mode == "relative" and (
            self.m0 is None or self.mn is None or self.mn - self.m0 <= self.min_range
        )

    def score(self, p_enough: float, margin: float) -> float | None:
        if self.mode == "absolute":
            return p_enough
        if self.m0 is None:
            return None
        if self.mode == "contextual":
            return margin - self.m0
        if self.flat:
            return None
        return (margin - self.m0) / (self.mn - self.m0)  # type: ignore[operator]

    def verdict(self, score: float | None) -> bool:
        """ENOUGH iff the score reaches the threshold; no score (missing anchor, flat judge) → NOT_ENOUGH."""
        return score is not None and score >= self.threshold


def margin(logprob_enough: float, logprob_not_enough: float) -> float:
    return logprob_enough - logprob_not_enough


# ---- isotonic (pool-adjacent-violators) -------------------------------------------------------------


def pav(values: Sequence[float], weights: Sequence[float] | None = None) -> list[float]:
    """Least-squares non-decreasing fit of `values` (in order) by pool-adjacent-violators."""
    w = list(weights) if weights is not None else [1.0] * len(values)
    blocks: list[list[float]] = []  # [mean, weight, count]
    for v, wt in zip(values, w, strict=True):
        blocks.append([float(v), float(wt), 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, w2, c2 = blocks.pop()
            m1, w1, c1 = blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, c1 + c2])
    out: list[float] = []
    for m, _, c in blocks:
        out += [m] * int(c)
    return out


def isotonic_cut(points: Sequence[tuple[int, float]], threshold: float) -> int | None:
    """Shortest probed k (k ≥ 1) whose isotonic fitted score reaches the threshold; None if none does.

    `points` are (k, score) pairs; anchors (k = 0) shape the fit but are never chosen.
    """
    pts = sorted(points)
    fitted = pav([s for _, s in pts])
    return next(
        (k for (k, _), f in zip(pts, fitted, strict=True) if k >= 1 and f >= threshold), None
    )


def contradictions(verdicts: Sequence[tuple[int, bool]]) -> int:
    """Pairs k < k' with ENOUGH at k and NOT_ENOUGH at k' (violations of monotone sufficiency)."""
    pts = sorted(verdicts)
    count, enough_so_far = 0, 0
    for _, ok in pts:
        if ok:
            enough_so_far += 1
        else:
            count += enough_so_far
    return count


# ---- degeneracy -----------------------------------------------------------------------------------


def degeneracy(
    enough_share: float,
    num_probes: int,
    ratios: Sequence[float],
    first_share: float,
    full_share: float,
) -> list[str]:
    """Reasons a run's judge looks degenerate (empty list when it does not)."""
    reasons = []
    if num_probes >= 20 and not 0.05 <= enough_share <= 0.95:
        reasons.append(f"{100 * enough_share:.1f}% of {num_probes} probes were ENOUGH")
    if len(ratios) >= 5 and first_share > 0.8:
        reasons.append(f"{100 * first_share:.0f}% of {len(ratios)} cuts are at sentence 1")
    if len(ratios) >= 5 and full_share > 0.8:
        reasons.append(f"{100 * full_share:.0f}% of {len(ratios)} cuts keep the full trace")
    return reasons
