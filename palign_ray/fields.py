"""Field values as datasets store them: lists, numbers, serialised lists, think tags, final answers, row filters."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
# Think-split cases, in the order summaries list them.
THINK_CASES = ("think_tags", "close_only", "open_only", "empty_think", "no_tags")
# Where a text field's value came from (the `trace_format` column).
FORMATS = ("string", "list", "serialised_list")

# A string whose first element is quoted: "['...', ...]" (Python repr, e.g. a CSV round-trip) or '["..."]'
# (JSON). Intervals such as "[0, 1]" do not match, so they stay answers.
_LIST_REPR = re.compile(r"^\s*\[\s*(?:[rRuU]?['\"]|\]\s*$)")
_TAGS = re.compile(r"</?think>")
# A clearly marked final line: "Answer: D", "### Final answer: 14 Pa", "**Answer:** $x=2$", "The final answer is 7."
_MARKED_ANSWER = re.compile(
    r"^(?:#+\s*)?(?:\*\*)?\s*(?:the\s+)?(?:final\s+)?answer\s*(?:\*\*)?\s*(?::|is\b)\s*(?:\*\*)?\s*(?P<a>.+?)\s*(?:\*\*)?\s*\.?\s*$",
    re.IGNORECASE,
)
MAX_MARKED_ANSWER_CHARS = 120  # longer "answers" are sentences, not something Eq. 9 can compare
# An answer field that is prose rather than an answer: more than one line, or many words.
MAX_ANSWER_WORDS = 12


@dataclass(frozen=True)
class Picked:
    """One field value after unwrapping lists; `reason` (a quarantine code) is set when it cannot be used."""

    value: Any
    form: str = (
        "string"  # one of FORMATS (for non-strings: the Python type's form before unwrapping)
    )
    reason: str = ""
    detail: str = ""


def looks_serialised_list(text: str) -> bool:
    return bool(_LIST_REPR.match(text))


def decode_list(text: str) -> list[Any] | None:
    """A serialised list (JSON first, then a Python literal), or None when it does not parse as a list."""
    try:
        value = json.loads(text)
    except ValueError:
        try:
            value = ast.literal_eval(text.strip())  # evaluates literals only, never code
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return None
    return value if isinstance(value, list) else None


def _element(items: list[Any], index: int, name: str, form: str) -> Picked:
    if not items:
        return Picked(None, form)
    if not -len(items) <= index < len(items):
        return Picked(
            None,
            form,
            "index_out_of_range",
            f"{name} has {len(items)} element(s); problems.trace_index={index}",
        )
    return Picked(items[index], form)


def pick(value: Any, index: int, name: str, role: str) -> Picked:
    """Unwrap a field value: a list (or a string that serialises one) → its `index`-th element.

    `role` names the field in the reason code: a serialised list that does not decode into a list of
    strings is quarantined as `<role>_is_serialised_list`, never passed on verbatim.
    """
    if isinstance(value, (list, tuple)):
        return _element(list(value), index, name, "list")
    if isinstance(value, str) and looks_serialised_list(value):
        items = decode_list(value)
        if items is None or not all(isinstance(x, str) for x in items):
            what = "does not parse as a list" if items is None else "is a list, but not of strings"
            return Picked(
                None,
                "serialised_list",
                f"{role}_is_serialised_list",
                f"{name} holds a string that looks like a serialised list and {what}: {value[:120]!r}",
            )
        return _element(items, index, name, "serialised_list")
    return Picked(value, "string")


# --------------------------------------------------------------------------- think tags


@dataclass(frozen=True)
class ThinkSplit:
    """A trace split at its think tags: the reasoning (the CoT), what followed `</think>`, and which case it was."""

    reasoning: str
    after: str
    case: str  # one of THINK_CASES


def split_think(text: str) -> ThinkSplit:
    """Reasoning inside <think>...</think>; with only `</think>` (R1-distill: the template opens the
    block in the prompt) what precedes it. The answer part after `</think>` is returned apart.

    An empty think block (thinking disabled) leaves the text around it as the reasoning; an unclosed
    `<think>` (cut off by the token limit) keeps everything without the tag.
    """
    if THINK_CLOSE in text:
        head, after = text.split(THINK_CLOSE, 1)
        case = "think_tags" if THINK_OPEN in head else "close_only"
        inner = head.split(THINK_OPEN, 1)[1] if THINK_OPEN in head else head
        if inner.strip():
            return ThinkSplit(inner.strip(), after.strip(), case)
        return ThinkSplit(_TAGS.sub("", text).strip(), "", "empty_think")
    if THINK_OPEN in text:
        return ThinkSplit(_TAGS.sub("", text).strip(), "", "open_only")
    return ThinkSplit(text, "", "no_tags")


# --------------------------------------------------------------------------- gold answers


def looks_like_solution(text: str) -> bool:
    """A worked solution rather than an answer: several lines, or more words than an answer has."""
    return "\n" in text.strip() or len(text.split()) > MAX_ANSWER_WORDS


def marked_final_answer(text: str) -> str | None:
    """The answer of a clearly marked LAST non-empty line ("Answer: D", "The final answer is 7."), else None."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return None
    m = _MARKED_ANSWER.match(lines[-1])
    if not m:
        return None
    answer = m.group("a").strip().strip("*").strip()
    if not answer or len(answer) > MAX_MARKED_ANSWER_CHARS or looks_like_solution(answer):
        return None
    return answer


def final_answer(solution: str) -> str | None:
    """Gold of a worked solution: GSM8K `####`, else the last `\\boxed{}`, else a marked final line."""
    from palign_ray.grading import gold_from_solution

    return gold_from_solution(solution) or marked_final_answer(solution)


# --------------------------------------------------------------------------- field mapping and gold
# Shared by the problems stage (`problems.normalize_problem`) and benchmark loading (`benchmarks`).


def first_present(row: dict[str, Any], names: Iterable[str]) -> str | None:
    """The first of `names` whose value in `row` is set (not None, not "")."""
    for name in names:
        if row.get(name) not in (None, ""):
            return name
    return None


def missing(value: Any) -> bool:
    """None, blank text or NaN (pandas' empty cell)."""
    return (
        value is None
        or (isinstance(value, str) and not value.strip())
        or (isinstance(value, float) and value != value)
    )


@dataclass(frozen=True)
class Gold:
    """The gold answer of a row (None with a reason code and detail when there is none) and its solution text."""

    answer: str | None
    solution: str
    reason: str = ""
    detail: str = ""


def _gold_from_text(text: str, solution: str, field: str) -> Gold:
    """A worked solution in the answer field (or the solution column): its final answer, else gold_not_extractable."""
    gold = final_answer(text)
    if gold is None:
        return Gold(
            None,
            solution or text,
            "gold_not_extractable",
            f"{field} is a worked solution with no \\boxed{{}}, '####' or final 'Answer:' line: ...{text[-160:]!r}",
        )
    return Gold(gold, solution or text)


def gold_answer(
    raw: Any,
    field: str,
    *,
    solution: str = "",
    solution_field: str = "solution",
    index: int = 0,
    prose_is_solution: bool = True,
) -> Gold:
    """Gold from an answer field's value (an answer, a list of them, a number, or a worked solution),
    else from the `solution` text; `index` picks from a list value.

    A value with `####` or a boxed answer is a worked solution. With `prose_is_solution`, so is long
    or multi-line text (training data puts explanations there); benchmark answer fields are answers
    by contract, and a long one (a 17-term polynomial in MATH-500) must stay an answer.
    """
    from palign_ray.grading import normalize_gold

    picked = pick(raw, index, field, "answer")
    raw = picked.value
    if picked.reason:
        return Gold(None, solution, picked.reason, picked.detail)
    if picked.form != "string" and raw is not None and not isinstance(raw, str):
        return Gold(
            None,
            solution,
            "wrong_type",
            f"{field} is a list of {type(raw).__name__}, not of strings",
        )
    if missing(raw):
        if not solution.strip():
            return Gold(None, solution, "missing_answer", f"no {field!r} and no {solution_field!r}")
        return _gold_from_text(solution, solution, solution_field)
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        return Gold(None, solution, "wrong_type", f"{field} is {type(raw).__name__}")
    # GSM8K keeps the worked solution in `answer` ("... #### 18"); MATH-style data may box it; s1K's
    # `solution` is a bare answer for AIME rows and a paragraph for science rows.
    if isinstance(raw, str) and (
        "####" in raw
        or "\\boxed" in raw
        or "\\fbox" in raw
        or (prose_is_solution and looks_like_solution(raw))
    ):
        return _gold_from_text(raw, solution, field)
    try:
        return Gold(normalize_gold(raw), solution)
    except ValueError as e:
        return Gold(None, solution, "bad_answer", str(e))


# --------------------------------------------------------------------------- reading a row
# One reading for every command that takes rows (problems, truncate, generate, align, grade, sft-data):
# the same decoding, the same reason codes, and a wrong type is never stringified (issue 27).


def read_text(value: Any, field: str, role: str, *, lists: bool = False, index: int = 0) -> Picked:
    """A text field's value → Picked(text), or a reason: `missing_<role>` (absent, blank, NaN) or
    `wrong_type` (a number, a dict, a bool; the detail names the field and what it held).

    With `lists`, a list or a serialised list is unwrapped at `index` (`pick`); without, a list is
    `wrong_type` (a question or prompt is one text; joining a list's items would guess).
    """
    picked = pick(value, index, field, role) if lists else Picked(value)
    if picked.reason:
        return picked
    text = picked.value
    if missing(text):
        where = "" if picked.form == "string" else f" ({picked.form} element {index})"
        return Picked(None, picked.form, f"missing_{role}", f"no text in field {field!r}{where}")
    if not isinstance(text, str):
        return Picked(None, picked.form, "wrong_type", f"field {field!r} {_shown(text)}, not text")
    return Picked(text, picked.form)


def read_trace(
    value: Any, field: str, index: int = 0, role: str = "trace"
) -> tuple[Picked, ThinkSplit]:
    """A reasoning trace: `read_text` with lists, then split at its think tags (R1's `</think>` and the
    answer after it are not the trace). A trace of nothing but tags keeps its text (the stages that
    judge or train on it quarantine an empty trace by their own rule)."""
    picked = read_text(value, field, role, lists=True, index=index)
    if picked.reason:
        return picked, ThinkSplit("", "", "")
    split = split_think(picked.value)
    return picked, split if split.reasoning else ThinkSplit(picked.value, "", split.case)


def _shown(value: Any) -> str:
    return f"is {type(value).__name__} {str(value)[:60]!r}"


def read_id(row: dict[str, Any], field: str, n: int) -> Picked:
    """A row's id: the id field's value (text or a whole number), else the row number `n`.

    An id of another type (a dict, a list, a bool) is `wrong_type`, with the row number as the value so
    that the quarantine row still names the row. A float id from a pandas column with gaps (7.0) is 7.
    """
    raw = row.get(field) if field else None
    if missing(raw):
        return Picked(str(n))
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        return Picked(str(n), reason="wrong_type", detail=f"id field {field!r} {_shown(raw)}")
    return Picked(str(raw))


DUPLICATE = "duplicate_problem_id"  # the reason code every command gives a repeated id


# --------------------------------------------------------------------------- row filter


@dataclass(frozen=True)
class RowFilter:
    """`col=value`, `col=a|b` (any of) or `col!=value` (none of); values compare as strings."""

    column: str
    values: tuple[str, ...]
    negate: bool = False

    def keeps(self, row: dict[str, Any]) -> bool:
        value = row.get(self.column)
        hit = value is not None and str(value) in self.values
        return hit != self.negate

    def describe(self) -> str:
        return f"{self.column}{'!=' if self.negate else '='}{'|'.join(self.values)}"


def parse_filter(spec: str) -> RowFilter | None:
    """`problems.filter` → RowFilter (None when empty); a malformed spec is a ValueError naming the forms."""
    if not spec.strip():
        return None
    negate = "!=" in spec
    column, sep, values = spec.partition("!=" if negate else "=")
    column = column.strip()
    options = tuple(v.strip() for v in values.split("|") if v.strip())
    if not sep or not column or not options:
        raise ValueError(
            f"problems.filter={spec!r}: use col=value, col=a|b or col!=value (e.g. cot_type=math)"
        )
    return RowFilter(column, options, negate)
