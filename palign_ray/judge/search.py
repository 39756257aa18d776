"""Sufficiency search over sentence prefixes as a pure state machine (binary, k-ary, linear, fixed ratio).

A search state knows nothing about prompts or engines. The caller asks `next_probes()` for the prefix
lengths k (in sentences, 1..n) to judge this round, judges them all (one engine call per round), and
feeds each verdict back with `record(k, verdict, score)`. `result()` gives the shortest prefix judged
ENOUGH, or the whole trace flagged `is_sufficient=False` when no prefix was.

Modes:
- binary: the paper's search exactly (lo=1, hi=n, mid=(lo+hi)//2; ENOUGH → best=mid, hi=mid-1,
  else lo=mid+1), one probe per round, at most ceil(log2(n+1)) probes.
- kary: up to k cut points per round spread evenly over [lo, hi]; the interval shrinks to the gap
  between the largest NOT_ENOUGH cut below the smallest ENOUGH cut and that ENOUGH cut, so it needs
  at most ceil(log_{k+1}(n+1)) rounds.
- linear: the validation oracle. It probes every k = 1..n in ONE round (one batched engine call,
  not n serial calls) and returns the shortest k judged ENOUGH; because it sees every verdict it also
  measures how monotone the judge is.
- fixed_ratio: no judging; k = max(1, ceil(ratio * n)) (the paper's fixed-ratio baseline).

Monotonicity: the searches assume ENOUGH at k implies ENOUGH at every k' > k. A contradiction
observed among the recorded verdicts (ENOUGH at k, NOT_ENOUGH at some k' > k) sets `non_monotone`.
Binary search can never observe one (after ENOUGH at k it only probes below k, after NOT_ENOUGH at
k' only above k'), so the flag is informative for kary and linear.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

SearchMode = Literal["binary", "kary", "linear", "fixed_ratio"]
SEARCH_MODES: tuple[str, ...] = ("binary", "kary", "linear", "fixed_ratio")


@dataclass(frozen=True)
class ProbeRecord:
    """One judged prefix: the aggregated verdict, its score (p(ENOUGH) or None) and the raw votes."""

    round: int
    k: int
    verdict: bool  # True = ENOUGH
    score: float | None = None
    votes: tuple[bool, ...] = ()


@dataclass(frozen=True)
class SearchResult:
    k: int  # prefix length in sentences (n when nothing was judged ENOUGH)
    is_sufficient: bool  # some probe judged the kept prefix ENOUGH
    non_monotone: bool  # a contradiction was observed among the recorded verdicts
    num_probes: int
    num_rounds: int  # rounds in which this problem had probes
    trace: tuple[ProbeRecord, ...]


def majority(votes: Sequence[bool]) -> bool:
    """Majority of m verdicts; a tie counts as NOT_ENOUGH (the conservative choice, like the paper's errors)."""
    if not votes:
        raise ValueError("majority of zero votes")
    return sum(votes) * 2 > len(votes)


def fixed_ratio_k(n: int, ratio: float) -> int:
    """max(1, ceil(ratio·n)); rounded first so 0.1·30 = 3.0000000000000004 keeps 3 sentences, not 4."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"judge.fixed_ratio must be in (0, 1], got {ratio}")
    return min(n, max(1, math.ceil(round(ratio * n, 9))))


def binary_probe_bound(n: int) -> int:
    """ceil(log2(n+1)): the most probes the paper's binary search makes on n sentences."""
    return (n).bit_length()


def kary_round_bound(n: int, k: int) -> int:
    """ceil(log_{k+1}(n+1)), computed in integers."""
    rounds, reach = 0, 1
    while reach < n + 1:
        reach *= k + 1
        rounds += 1
    return rounds


def kary_cuts(lo: int, hi: int, k: int) -> list[int]:
    """Up to k cut points in [lo, hi] splitting the hi-lo+2 candidate answers into k+1 near-equal groups.

    Candidates are t in lo..hi+1 (t = hi+1: nothing in the interval is ENOUGH). Cut j sits at
    lo-1+ceil(j(s+1)/(k+1)) with s = hi-lo+1, so every group has at most ceil((s+1)/(k+1)) candidates.
    """
    s = hi - lo + 1
    if s <= 0:
        return []
    if s <= k:
        return list(range(lo, hi + 1))
    cuts = {lo - 1 + -(-j * (s + 1) // (k + 1)) for j in range(1, k + 1)}
    return sorted(c for c in cuts if lo <= c <= hi)


class SearchState:
    """The search over prefixes 1..n of one problem; see the module docstring for the modes."""

    def __init__(
        self, n: int, mode: SearchMode = "binary", kary_k: int = 3, fixed_ratio: float = 0.25
    ):
        if n < 1:
            raise ValueError(f"a search needs at least one sentence, got n={n}")
        if mode not in SEARCH_MODES:
            raise ValueError(f"judge.search={mode!r} is not one of {list(SEARCH_MODES)}")
        if mode == "kary" and kary_k < 1:
            raise ValueError(f"judge.kary_k must be >= 1, got {kary_k}")
        self.n, self.mode, self.kary_k = n, mode, kary_k
        self.lo, self.hi = 1, n
        self.best: int | None = None
        self.trace: list[ProbeRecord] = []
        self.verdicts: dict[int, bool] = {}
        self.round = 0  # rounds started so far
        self._pending: set[int] = set()
        self._fixed = fixed_ratio_k(n, fixed_ratio) if mode == "fixed_ratio" else None
        self._linear_done = False

    @property
    def done(self) -> bool:
        if self._pending:
            return False
        if self.mode == "fixed_ratio":
            return True
        if self.mode == "linear":
            return self._linear_done
        return self.lo > self.hi

    def next_probes(self) -> list[int]:
        """Prefix lengths to judge this round (starts a round); [] when done. Call again only after recording them."""
        assert not self._pending, (
            f"probes {sorted(self._pending)} of round {self.round} not recorded yet"
        )
        if self.done:
            return []
        if self.mode == "binary":
            probes = [(self.lo + self.hi) // 2]
        elif self.mode == "kary":
            probes = kary_cuts(self.lo, self.hi, self.kary_k)
        else:  # linear: every prefix at once
            probes = list(range(1, self.n + 1))
        self.round += 1
        self._pending = set(probes)
        return probes

    def record(
        self, k: int, verdict: bool, score: float | None = None, votes: Sequence[bool] = ()
    ) -> None:
        """The (majority) verdict for prefix k of the current round; the state advances once all are in."""
        if k not in self._pending:
            raise ValueError(
                f"k={k} was not requested in round {self.round} (pending: {sorted(self._pending)})"
            )
        self._pending.discard(k)
        self.trace.append(
            ProbeRecord(self.round, k, bool(verdict), score, tuple(bool(v) for v in votes))
        )
        self.verdicts[k] = bool(verdict)
        if not self._pending:
            self._advance()

    def _advance(self) -> None:
        this_round = {p.k: p.verdict for p in self.trace if p.round == self.round}
        if self.mode == "binary":
            ((mid, ok),) = this_round.items()
            if ok:
                self.best, self.hi = mid, mid - 1
            else:
                self.lo = mid + 1
        elif self.mode == "kary":
            enough = [k for k, ok in this_round.items() if ok]
            if enough:
                self.best = min(enough)
                self.hi = self.best - 1
            below = [
                k for k, ok in this_round.items() if not ok and (self.best is None or k < self.best)
            ]
            if below:
                self.lo = max(self.lo, max(below) + 1)
        else:  # linear
            enough = [k for k, ok in this_round.items() if ok]
            self.best = min(enough) if enough else None
            self._linear_done = True

    def stop(self) -> None:
        """End the search now (e.g. the judge cannot tell, see calibration): result() keeps what was found so far."""
        assert not self._pending, (
            f"probes {sorted(self._pending)} of round {self.round} not recorded yet"
        )
        self.lo, self.hi, self._linear_done = self.n + 1, self.n, True

    @property
    def non_monotone(self) -> bool:
        """ENOUGH at some k and NOT_ENOUGH at some k' > k among the recorded verdicts."""
        enough = [k for k, ok in self.verdicts.items() if ok]
        return bool(enough) and any(not ok and k > min(enough) for k, ok in self.verdicts.items())

    def result(self) -> SearchResult:
        assert self.done, "result() before the search is done"
        if self.mode == "fixed_ratio":
            k, sufficient = self._fixed or self.n, False
        else:
            k, sufficient = (self.best, True) if self.best is not None else (self.n, False)
        rounds = len({p.round for p in self.trace})
        return SearchResult(
            k, sufficient, self.non_monotone, len(self.trace), rounds, tuple(self.trace)
        )
