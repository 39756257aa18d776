"""Training problems screened before any teacher token is spent: exact duplicates, and problems that
overlap an evaluation benchmark (n-gram decontamination). Pure: no Ray, no vLLM, no torch.

A student evaluated on problems it was trained on reports recall, not reasoning; public reasoning
sets overlap MATH-500, AIME and AMC. The screen is an inverted index over the benchmark items'
n-grams, so its cost grows with the training set, not with training set × benchmark.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from palign_ray import records as R
from palign_ray.artifacts import quarantine_row

STAGE = "problems"
DUPLICATE_QUESTION = "duplicate_question"
CONTAMINATED = "contaminated"
# Quarantine columns naming what a removed problem matched.
MATCHED_BENCHMARK = "matched_benchmark"
MATCHED_ITEM = "matched_item"
DUPLICATE_OF = "duplicate_of"

# LaTeX that changes spacing or sizing only: "\left(", "\,", "\quad", "~" read the same without it.
_LATEX_SPACING = re.compile(
    r"\\(?:left|right|big|Big|bigg|Bigg)(?![a-zA-Z])|\\[,;:! ]|\\q?quad\b|~|\$"
)
_DISPLAY_FRAC = re.compile(r"\\[dt]frac\b")
# Tokens: words and numbers, LaTeX commands, and every other visible character on its own.
_TOKEN = re.compile(r"[a-z0-9]+|\\[a-z]+|[^\sa-z0-9]")


def normalise(text: str) -> str:
    """Case, whitespace and LaTeX spacing folded away: two copies of a problem that differ only in
    those compare equal ("Find $x$ if \\; x^2 = 4" and "find x if x^2=4" do not: "x^2=4" has no
    spaces to fold, so tokens, not characters, are compared by `tokens`)."""
    text = _DISPLAY_FRAC.sub(r"\\frac", _LATEX_SPACING.sub(" ", text.lower()))
    return " ".join(text.split())


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(normalise(text))


def exact_key(text: str) -> str:
    """The text two copies of one problem share: its tokens, so "x^2 = 4" and "x^2=4" are one key."""
    return " ".join(tokens(text))


def ngrams(toks: list[str], n: int) -> set[int]:
    """Hashes of the distinct n-grams (the whole text as one gram when it is shorter than n)."""
    if len(toks) <= n:
        return {hash(tuple(toks))} if toks else set()
    return {hash(tuple(toks[i : i + n])) for i in range(len(toks) - n + 1)}


@dataclass(frozen=True)
class Match:
    """The benchmark item a training problem overlaps most, and by how much."""

    benchmark: str
    item: str
    shared: int  # the item's n-grams found in the training problem
    total: int  # the item's n-grams

    @property
    def share(self) -> float:
        return self.shared / self.total

    def describe(self, n: int) -> str:
        return f"{self.benchmark}/{self.item}: {self.shared} of its {self.total} {n}-grams ({self.share:.0%})"


@dataclass
class BenchmarkIndex:
    """n-gram → benchmark items holding it. `match` costs one dict lookup per n-gram of the problem."""

    n: int
    items: list[tuple[str, str, int]] = field(default_factory=list)  # (benchmark, item id, n-grams)
    grams: dict[int, list[int]] = field(default_factory=dict)
    short_lengths: set[int] = field(default_factory=set)  # items shorter than n, by token count

    def add(self, benchmark: str, item: str, text: str) -> None:
        toks = tokens(text)
        grams = ngrams(toks, self.n)
        if not grams:
            return
        if len(toks) < self.n:
            self.short_lengths.add(len(toks))
        index = len(self.items)
        self.items.append((benchmark, item, len(grams)))
        for g in grams:
            self.grams.setdefault(g, []).append(index)

    def matches(self, text: str) -> list[Match]:
        """Every item sharing an n-gram with `text`, the largest share first (ties: indexing order)."""
        toks = tokens(text)
        grams = ngrams(toks, self.n)
        for k in self.short_lengths:  # a short item matches where the problem contains it whole
            grams |= {hash(tuple(toks[i : i + k])) for i in range(len(toks) - k + 1)}
        hits: Counter[int] = Counter()
        for g in grams:
            for index in self.grams.get(g, ()):
                hits[index] += 1
        ranked = sorted(hits, key=lambda i: (-hits[i] / self.items[i][2], i))
        return [Match(*self.items[i][:2], hits[i], self.items[i][2]) for i in ranked]

    def match(self, text: str) -> Match | None:
        """The item with the largest share of its n-grams in `text`, or None."""
        found = self.matches(text)
        return found[0] if found else None

    def contamination(self, text: str, threshold: float) -> Match | None:
        """The best item `text` counts as: share >= `threshold`, or a whole match (1.0) for the
        benchmarks in EXACT_ONLY; None when there is none."""
        return next(
            (
                m
                for m in self.matches(text)
                if m.share >= (1.0 if m.benchmark in EXACT_ONLY else threshold)
            ),
            None,
        )


# Templated problems share their wording and differ in their numbers: measured on 1,000 built-in train
# problems against the 70 held-out ones (8-grams), 282 hold >= 0.5 of a held-out item's n-grams (at
# most 0.889) while no two are the same problem (bench/results/2026-12-06-decontam.md). Against the
# built-in benchmark only a whole match (share 1.0: the same draw) counts.
EXACT_ONLY = frozenset({"builtin"})


def build_index(benchmarks: Iterable[tuple[str, list[dict[str, Any]]]], n: int) -> BenchmarkIndex:
    """An index over the questions of (benchmark name, problem rows) pairs."""
    index = BenchmarkIndex(n)
    for name, rows in benchmarks:
        for row in rows:
            index.add(name, str(row[R.PROBLEM_ID]), str(row[R.QUESTION]))
    return index


def screen(
    rows: list[dict[str, Any]],
    *,
    dedup: bool,
    index: BenchmarkIndex | None,
    threshold: float,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Problem rows → (kept, quarantined, summary). A repeat of an earlier problem's text is
    `duplicate_question`; a problem holding at least `threshold` of some benchmark item's n-grams is
    `contaminated`, with the benchmark and item it matched."""
    kept: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    first: dict[str, str] = {}
    by_benchmark: Counter[str] = Counter()
    for row in rows:
        pid, question = str(row[R.PROBLEM_ID]), str(row[R.QUESTION])
        if dedup:
            key = exact_key(question)
            if key in first:
                bad.append(
                    quarantine_row(
                        STAGE,
                        pid,
                        DUPLICATE_QUESTION,
                        f"the same text (case, spacing, LaTeX spacing aside) as problem {first[key]}",
                        **{DUPLICATE_OF: first[key]},
                    )
                )
                continue
            first[key] = pid
        hit = index.contamination(question, threshold) if index is not None else None
        if hit is not None:
            by_benchmark[hit.benchmark] += 1
            bad.append(
                quarantine_row(
                    STAGE,
                    pid,
                    CONTAMINATED,
                    hit.describe(index.n if index else 0),
                    **{MATCHED_BENCHMARK: hit.benchmark, MATCHED_ITEM: hit.item},
                )
            )
            continue
        kept.append(row)
    summary = {
        "dedup": dedup,
        "decontaminated_against": sorted({b for b, _, _ in index.items}) if index else [],
        "benchmark_items": len(index.items) if index else 0,
        "num_duplicates": sum(1 for b in bad if b[R.REASON] == DUPLICATE_QUESTION),
        "num_contaminated": sum(by_benchmark.values()),
        "contaminated_by_benchmark": dict(by_benchmark),
    }
    return kept, bad, summary


def benchmark_index(cfg: Any) -> tuple[BenchmarkIndex | None, list[str]]:
    """The index over `cfg.eval.benchmarks` as evaluation loads them (None when problems.decontaminate
    is off or none is on disk), and a note per benchmark left out, saying why."""
    from palign_ray.benchmarks import BENCHMARK, BENCHMARKS, BUILTIN, load_benchmark

    p, e = cfg.problems, cfg.eval
    if not p.decontaminate:
        return None, ["problems.decontaminate=false"]
    loaded, notes = [], []
    for name in e.benchmarks:
        known = name in BENCHMARKS or name == BUILTIN
        if (name in BENCHMARKS and not (Path(e.data_dir) / BENCHMARKS[name].path).is_file()) or (
            not known and not Path(name).is_file()
        ):
            notes.append(f"{name}: not on disk (eval.data_dir={e.data_dir})")
            continue
        # every item of a file (an evaluation of more problems later must still be clean); the
        # built-in benchmark is generated, so exactly the draws evaluation makes
        limit = e.num_problems if name == BUILTIN else 0
        rows, _ = load_benchmark(
            name, e.data_dir, limit, e.builtin_seed, builtin_split=e.builtin_split
        )
        loaded.append((rows[0][BENCHMARK] if rows else name, rows))  # a file: named by its stem
    if not loaded:
        return None, notes
    return build_index(loaded, p.decontaminate_ngram), notes


def screen_problems(
    rows: list[dict[str, Any]], cfg: Any
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """The problems stage's screen with the run's settings: (kept, quarantined, summary with notes)."""
    import logging
    import time

    start = time.perf_counter()
    index, notes = benchmark_index(cfg)
    kept, bad, summary = screen(
        rows, dedup=cfg.problems.dedup, index=index, threshold=cfg.problems.decontaminate_threshold
    )
    summary.update(
        ngram=cfg.problems.decontaminate_ngram if index else None,
        threshold=cfg.problems.decontaminate_threshold if index else None,
        not_checked=notes,
        seconds=round(time.perf_counter() - start, 3),
    )
    logging.getLogger(__name__).info(
        "problems screen: %d duplicates, %d contaminated (%s) of %d; not checked: %s",
        summary["num_duplicates"],
        summary["num_contaminated"],
        summary["contaminated_by_benchmark"],
        len(rows),
        "; ".join(notes) or "none",
    )
    return kept, bad, summary
