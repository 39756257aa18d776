"""The built-in problem generator: templated word problems with exact integer answers.

Each problem carries a worked solution whose decisive sentence (the one that fixes the answer) is
known, so tests and benchmarks get a reference truncation point without a model. Used by
`problems.source=builtin` (`problems.load_problems`) and the `builtin` benchmark.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from palign_ray import records as R
from palign_ray.records import DECISIVE_CHAR_END, DECISIVE_SENTENCE, SOLUTION, SOURCE, TEMPLATE


@dataclass(frozen=True)
class Worked:
    """A generated problem: question, integer answer, solution sentences, decisive sentence index."""

    template: str
    question: str
    answer: int
    steps: tuple[str, ...]
    decisive: int


NAMES = (
    "Maria",
    "Omar",
    "Lena",
    "Kenji",
    "Aisha",
    "Tom",
    "Priya",
    "Diego",
    "Sofia",
    "Ravi",
    "Emma",
    "Yusuf",
)
ITEMS = (
    ("notebook", "notebooks"),
    ("pen", "pens"),
    ("apple", "apples"),
    ("mug", "mugs"),
    ("ticket", "tickets"),
    ("candle", "candles"),
)


def _shopping(r: random.Random) -> Worked:
    name = r.choice(NAMES)
    (a1, a2), (b1, b2) = r.sample(ITEMS, 2)
    na, pa_, nb, pb = r.randint(2, 9), r.randint(2, 12), r.randint(2, 9), r.randint(2, 12)
    ca, cb = na * pa_, nb * pb
    total = ca + cb
    bill = next(b for b in (20, 50, 100, 200, 500) if b > total)  # total reaches 2 * 9 * 12 = 216
    change = bill - total
    q = (
        f"{name} buys {na} {a2} for {pa_} dollars each and {nb} {b2} for {pb} dollars each. "
        f"{name} pays with a {bill} dollar bill. How many dollars of change does {name} get back?"
    )
    steps = (
        f"The {a2} cost {na} * {pa_} = {ca} dollars.",
        f"The {b2} cost {nb} * {pb} = {cb} dollars.",
        f"Together {name} spends {ca} + {cb} = {total} dollars.",
        f"The change is {bill} - {total} = {change} dollars.",
        f"So {name} gets {change} dollars back.",
    )
    return Worked("shopping", q, change, steps, 3)


def _rate_time(r: random.Random) -> Worked:
    rate, hours, days = r.randint(3, 15), r.randint(2, 8), r.randint(2, 6)
    per_day = rate * hours
    total = per_day * days
    q = (
        f"A machine makes {rate} toys every hour. It runs for {hours} hours each day. "
        f"How many toys does it make in {days} days?"
    )
    steps = (
        f"In one day the machine runs {hours} hours.",
        f"Each day it makes {rate} * {hours} = {per_day} toys.",
        f"Over {days} days it makes {per_day} * {days} = {total} toys.",
        f"So the machine makes {total} toys.",
    )
    return Worked("rate_time", q, total, steps, 2)


def _ages(r: random.Random) -> Worked:
    a, b = r.sample(NAMES, 2)
    young, gap, years = r.randint(4, 30), r.randint(2, 12), r.randint(2, 9)
    total = (young + years) + (young + gap + years)
    q = (
        f"{a} is {gap} years older than {b}. In {years} years, the sum of their ages will be {total}. "
        f"How old is {b} now?"
    )
    twice = total - 2 * years - gap
    steps = (
        f"Let {b} be x years old now, so {a} is x + {gap} years old.",
        f"In {years} years their ages are x + {years} and x + {gap + years}.",
        f"Their sum is 2x + {gap + 2 * years} = {total}.",
        f"So 2x = {total} - {gap + 2 * years} = {twice}.",
        f"Then x = {twice} / 2 = {young}.",
        f"So {b} is {young} years old now.",
    )
    return Worked("ages", q, young, steps, 4)


def _linear(r: random.Random) -> Worked:
    x, m, c = r.randint(2, 20), r.randint(2, 9), r.randint(1, 30)
    res = m * x + c
    q = f"When a number is multiplied by {m} and then {c} is added, the result is {res}. What is the number?"
    steps = (
        f"Let the number be x, so {m}x + {c} = {res}.",
        f"Subtracting {c} gives {m}x = {res - c}.",
        f"Dividing by {m} gives x = {res - c} / {m} = {x}.",
        f"Check: {m} * {x} + {c} = {res}.",
        f"So the number is {x}.",
    )
    return Worked("linear", q, x, steps, 2)


def _percent(r: random.Random) -> Worked:
    pct = r.choice((10, 20, 25, 50))
    price = r.choice(range(20, 201, 20))
    n = r.randint(2, 6)
    off = price * pct // 100
    each = price - off
    total = each * n
    item = r.choice(ITEMS)[0]
    q = (
        f"A {item} costs {price} dollars. During a sale every {item} is {pct} percent off. "
        f"How many dollars do {n} {item}s cost during the sale?"
    )
    steps = (
        f"The discount on one {item} is {pct} percent of {price}, which is {price} * {pct} / 100 = {off} dollars.",
        f"So one {item} costs {price} - {off} = {each} dollars on sale.",
        f"Then {n} of them cost {n} * {each} = {total} dollars.",
        f"So the total during the sale is {total} dollars.",
    )
    return Worked("percent", q, total, steps, 2)


def _distance(r: random.Random) -> Worked:
    v1, t1, v2, t2 = r.randint(20, 70), r.randint(1, 4), r.randint(20, 70), r.randint(1, 4)
    d1, d2 = v1 * t1, v2 * t2
    q = (
        f"A car drives at {v1} km per hour for {t1} hours, then at {v2} km per hour for {t2} hours. "
        f"How many kilometers does it travel in total?"
    )
    steps = (
        f"In the first part it travels {v1} * {t1} = {d1} km.",
        f"In the second part it travels {v2} * {t2} = {d2} km.",
        f"The total distance is {d1} + {d2} = {d1 + d2} km.",
        f"So the car travels {d1 + d2} km.",
    )
    return Worked("distance", q, d1 + d2, steps, 2)


def _sharing(r: random.Random) -> Worked:
    name = r.choice(NAMES)
    friends, batches, per_batch = r.randint(2, 8), r.randint(3, 8), r.choice((6, 8, 10, 12))
    baked = batches * per_batch
    # What is kept makes the rest split evenly among the friends (never zero: "keeps 0" reads oddly).
    kept = baked % friends or friends
    share = (baked - kept) // friends
    q = (
        f"{name} bakes {batches} batches of cookies with {per_batch} cookies in each batch. "
        f"{name} keeps {kept} cookies and shares the rest equally among {friends} friends. "
        f"How many cookies does each friend get?"
    )
    steps = (
        f"{name} bakes {batches} * {per_batch} = {baked} cookies.",
        f"After keeping {kept}, there are {baked} - {kept} = {baked - kept} cookies left.",
        f"Each friend gets {baked - kept} / {friends} = {share} cookies.",
        f"So each friend gets {share} cookies.",
    )
    return Worked("sharing", q, share, steps, 2)


TEMPLATES: dict[str, Callable[[random.Random], Worked]] = {
    "shopping": _shopping,
    "rate_time": _rate_time,
    "ages": _ages,
    "linear": _linear,
    "percent": _percent,
    "distance": _distance,
    "sharing": _sharing,
}


Split = Literal["all", "train", "heldout"]
Style = Literal["short", "long"]
HELDOUT_ONE_IN = 5  # a fifth of each template's parameter draws is held out
# Draws per problem: ample for the smallest split (rate_time's held-out fifth: ~90 parameter draws).
MAX_DRAWS = 10_000


def _numbers(question: str) -> list[str]:
    return re.findall(r"[0-9]+", question)


def split_of(w: Worked) -> Literal["train", "heldout"]:
    """Train or held out, by the template and the numbers of the question (names and items do not count).

    A held-out problem therefore never repeats a training problem's parameter draw in other words: the
    student must apply the procedure to numbers it has not seen with that template.
    """
    key = f"{w.template}:{','.join(_numbers(w.question))}"
    digest = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
    return "heldout" if digest % HELDOUT_ONE_IN == 0 else "train"


def lengthen(w: Worked) -> Worked:
    """The worked solution the way reasoning models write it: restate, a dead end, "Wait,", the steps, a check.

    The dead end adds up every number in the question (the naive first move); it is left out where that
    sum happens to be the answer. The decisive sentence stays the one that first computes the answer.
    """
    nums = _numbers(w.question)
    ask = next((q for q in re.split(r"(?<=[.?]) ", w.question) if q.endswith("?")), w.question)
    naive = sum(map(int, nums))
    start: list[str] = [
        f"Let me restate what is asked: {ask}",
        f"The numbers given are {', '.join(nums[:-1])} and {nums[-1]}.",
    ]
    if naive != w.answer:
        start += [
            f"A first idea is to add them all: {' + '.join(nums)} = {naive}.",
            f"Wait, that ignores how the quantities are related, so {naive} cannot be right.",
        ]
    start.append("Let me work through it step by step instead.")
    check = (
        "Let me check the key step again.",
        w.steps[w.decisive],
        f"It gives {w.answer} again, so the result is consistent.",
    )
    return dataclasses.replace(
        w, steps=(*start, *w.steps, *check), decisive=len(start) + w.decisive
    )


def render_solution(w: Worked) -> tuple[str, int]:
    """Sentences joined by single spaces, the boxed answer last; returns (text, decisive sentence end)."""
    sentences = [*w.steps, f"The final answer is \\boxed{{{w.answer}}}."]
    text = " ".join(sentences)
    decisive_end = len(" ".join(sentences[: w.decisive + 1]))
    return text, decisive_end


def builtin_problems(
    n: int, seed: int = 0, split: Split = "all", style: Style = "short"
) -> list[dict[str, Any]]:
    """`n` templated word problems with exact integer answers; the same arguments always give the same rows.

    split: "all" = every draw; "train"/"heldout" = only draws of that side of `split_of` (disjoint sets,
    whatever the seeds). style: "short" = the plain worked solution; "long" = `lengthen`ed.
    """
    if n < 0:
        raise ValueError(f"number of builtin problems must be >= 0, got {n}")
    rng = random.Random(seed)
    names = sorted(TEMPLATES)
    rows = []
    for i in range(n):
        template = names[i % len(names)]  # round-robin: every template appears in small sets
        w = _draw(TEMPLATES[template], rng, split)
        if style == "long":
            w = lengthen(w)
        solution, decisive_end = render_solution(w)
        rows.append(
            {
                R.PROBLEM_ID: f"builtin-{seed}-{i:05d}"
                if split == "all"
                else f"builtin-{split}-{seed}-{i:05d}",
                R.QUESTION: w.question,
                R.ANSWER: str(w.answer),
                SOLUTION: solution,
                DECISIVE_SENTENCE: w.decisive,
                DECISIVE_CHAR_END: decisive_end,
                TEMPLATE: template,
                SOURCE: "builtin",
            }
        )
    return rows


def _draw(make: Callable[[random.Random], Worked], rng: random.Random, split: Split) -> Worked:
    for _ in range(MAX_DRAWS):
        w = make(rng)
        if split == "all" or split_of(w) == split:
            return w
    raise RuntimeError(f"no {split} problem in {MAX_DRAWS} draws of a template")  # a template bug


def dump_builtin(
    path: str | Path, n: int, seed: int = 0, split: Split = "all", style: Style = "short"
) -> None:
    """Write the built-in set as JSONL (handy for inspecting or for `palign teacher --input`)."""
    rows = builtin_problems(n, seed, split, style)
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))
