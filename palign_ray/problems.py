"""Problem sets: file/dataset loading with field mapping and gold normalisation, and the built-in word problems."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from palign_ray import records as R
from palign_ray.artifacts import quarantine_row, read_rows, uniform_rows
from palign_ray.config import ProblemsConfig
from palign_ray.fields import Gold, first_present, gold_answer, read_text
from palign_ray.records import (
    AFTER_THINK,
    GROUP,
    SOLUTION,
    THINK_SPLIT,
    TRACE_FORMAT,
)

log = logging.getLogger(__name__)

STAGE = "problems"
QUESTION_FIELDS = ("problem", "question", "prompt")
ID_FIELDS = ("id", "unique_id")
GROUP_FIELDS = ("cot_type", "source_type", "source", "subject")


# --------------------------------------------------------------------------- loading


def content_id(question: str) -> str:
    """Stable id from the question text (whitespace-insensitive) when the data has no id."""
    norm = " ".join(question.split())
    return "q-" + hashlib.sha256(norm.encode()).hexdigest()[:16]


def _gold(row: dict[str, Any], cfg: ProblemsConfig) -> Gold:
    """Gold from the answer field (a value, a list of them, a number, or a worked solution), else from `solution`."""
    given = row.get(SOLUTION)
    return gold_answer(
        row.get(cfg.answer_field or R.ANSWER),
        cfg.answer_field or R.ANSWER,
        solution=given if isinstance(given, str) else "",
        solution_field=SOLUTION,
        index=cfg.trace_index,
    )


@dataclass(frozen=True)
class Trace:
    """A trace field decoded and split at its think tags (text None with a reason when unusable)."""

    text: str | None
    form: str = ""
    case: str = ""
    after: str = ""
    reason: str = ""
    detail: str = ""


def _trace(row: dict[str, Any], cfg: ProblemsConfig) -> Trace:
    from palign_ray.fields import read_trace

    picked, split = read_trace(row.get(cfg.trace_field), cfg.trace_field, cfg.trace_index)
    if picked.reason:
        return Trace(None, picked.form, reason=picked.reason, detail=picked.detail)
    return Trace(split.reasoning, picked.form, split.case, split.after)


def _row_id(row: dict[str, Any], cfg: ProblemsConfig, where: str) -> str:
    """The id a row would get (its id field, else a hash of its question, else its place in the file)."""
    id_field = cfg.id_field or first_present(row, ID_FIELDS)
    if id_field and row.get(id_field) not in (None, ""):
        return str(row[id_field])
    question = row.get(cfg.question_field or first_present(row, QUESTION_FIELDS) or "")
    return content_id(question) if isinstance(question, str) and question.strip() else where


def _group(row: dict[str, Any], group_field: str) -> dict[str, Any]:
    """{GROUP: the row's value of the group column} (as text), or {} when the data has no such column."""
    if not group_field:
        return {}
    return {GROUP: None if row.get(group_field) is None else str(row[group_field])}


def normalize_problem(
    row: dict[str, Any], cfg: ProblemsConfig, where: str, group_field: str = ""
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """One raw row → (problem row, None) or (None, quarantine row with a reason code)."""
    qfield = cfg.question_field or first_present(row, QUESTION_FIELDS)
    id_field = cfg.id_field or first_present(row, ID_FIELDS)
    question = row.get(qfield) if qfield else None
    raw_id = row.get(id_field) if id_field else None
    fallback_id = str(raw_id) if raw_id not in (None, "") else where
    group = _group(row, group_field)
    text = read_text(question, qfield or "/".join(QUESTION_FIELDS), "question")
    if text.reason:
        return None, quarantine_row(
            STAGE, fallback_id, text.reason, f"{where}: {text.detail}", **group
        )
    question = text.value
    pid = str(raw_id) if raw_id not in (None, "") else content_id(question)
    gold = _gold(row, cfg)
    if gold.answer is None:
        return None, quarantine_row(STAGE, pid, gold.reason, f"{where}: {gold.detail}", **group)
    out = {
        R.PROBLEM_ID: pid,
        R.QUESTION: question.strip(),
        R.ANSWER: gold.answer,
        SOLUTION: gold.solution,
        **group,
    }
    if cfg.trace_field:
        trace = _trace(row, cfg)
        if trace.text is None:
            return None, quarantine_row(
                STAGE, pid, trace.reason, f"{where}: {trace.detail}", **group
            )
        out.update(
            {
                R.COT: trace.text,
                TRACE_FORMAT: trace.form,
                THINK_SPLIT: trace.case,
                AFTER_THINK: trace.after,
            }
        )
    return out, None


def group_column(rows: list[dict[str, Any]], cfg: ProblemsConfig) -> str:
    """The column load counts are grouped by: problems.group_field, else the first of GROUP_FIELDS the data has."""
    if cfg.group_field:
        return cfg.group_field
    return next((f for f in GROUP_FIELDS if any(f in r for r in rows)), "")


def _filtered_out(
    rows: list[dict[str, Any]], cfg: ProblemsConfig, source: str
) -> Callable[[dict[str, Any]], str]:
    """A check giving the filtered_out detail of a row ("" when problems.filter keeps it)."""
    from palign_ray.fields import parse_filter

    rule = parse_filter(cfg.filter)
    if rule is None:
        return lambda row: ""
    if rows and not any(rule.column in r for r in rows):
        present = sorted({k for r in rows[:100] for k in r if not k.startswith("_")})
        raise ValueError(
            f"problems.filter={cfg.filter!r}: no row of {source} has a column {rule.column!r}; columns: {present}"
        )
    return lambda row: (
        ""
        if rule.keeps(row)
        else f"{rule.column}={row.get(rule.column)!r} (problems.filter={rule.describe()})"
    )


def normalize_problems(
    rows: Iterable[dict[str, Any]], cfg: ProblemsConfig, source: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Filter, map fields, normalise gold, dedupe ids; stop after cfg.num_problems good rows (0 = all)."""
    rows = list(rows)
    group_field = group_column(rows, cfg)
    filtered = _filtered_out(rows, cfg, source)
    out: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    seen: set[str] = set()
    for n, row in enumerate(rows):
        if cfg.num_problems and len(out) >= cfg.num_problems:
            break
        where = (
            f"{source}:{row.get('_source_line', n + 1)}"
            if "_source_line" in row
            else f"{source}[row {n}]"
        )
        why = filtered(row)
        if why:
            bad.append(
                quarantine_row(
                    STAGE,
                    _row_id(row, cfg, where),
                    "filtered_out",
                    f"{where}: {why}",
                    **_group(row, group_field),
                )
            )
            continue
        good, rejected = normalize_problem(row, cfg, where, group_field)
        if good is None:
            assert rejected is not None  # normalize_problem returns exactly one of the two
            bad.append(rejected)
        elif good[R.PROBLEM_ID] in seen:
            bad.append(
                quarantine_row(
                    STAGE,
                    good[R.PROBLEM_ID],
                    "duplicate_problem_id",
                    f"{where}: id seen earlier in {source}",
                    **_group(row, group_field),
                )
            )
        else:
            seen.add(good[R.PROBLEM_ID])
            out.append(good)
    return out, bad


def _read_arrow_dir(path: Path) -> list[dict[str, Any]]:
    """A `datasets.save_to_disk` directory without the `datasets` package: its Arrow stream files."""
    import pyarrow as pa

    files = sorted(path.rglob("*.arrow"))
    if not files:
        raise ValueError(f"input {path}: a datasets directory without *.arrow files")
    rows: list[dict[str, Any]] = []
    for f in files:
        with pa.memory_map(str(f)) as src:
            rows += pa.ipc.open_stream(src).read_all().to_pylist()
    return rows


def read_problem_rows(path: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Raw rows (and unreadable-line quarantine) of a JSONL/Parquet file or a local HF datasets dir."""
    p = Path(path)
    is_hf_dir = p.is_dir() and ((p / "dataset_info.json").exists() or (p / "state.json").exists())
    if is_hf_dir:
        try:
            import datasets  # noqa: F401 - only probing whether read_rows can use it
        except ImportError:
            return _read_arrow_dir(p), []
    return read_rows(p, STAGE)


def load_problems(
    cfg: ProblemsConfig, path: str | Path | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Problems from `path` (or cfg.path when source=file, or the built-in set) → (rows, quarantine)."""
    if path is None and cfg.source == "builtin":
        from palign_ray.builtin import builtin_problems  # lazy: only the built-in source needs it

        rows = builtin_problems(
            cfg.num_problems or 32, cfg.builtin_seed, cfg.builtin_split, cfg.builtin_style
        )
        return rows, []
    src = path or cfg.path
    if not src:
        raise ValueError(
            "problems.source=file needs problems.path (a JSONL/Parquet file or a datasets directory)"
        )
    raw, bad = read_problem_rows(src)
    rows, rejected = normalize_problems(raw, cfg, str(src))
    # Same keys in every row: Parquet writers take a table's columns from its first row.
    rows, quarantined = uniform_rows(rows), uniform_rows(bad + rejected)
    log.info(
        "problems: %d from %s, %d quarantined; %s",
        len(rows),
        src,
        len(quarantined),
        json.dumps(load_summary(rows, quarantined), default=str),
    )
    return rows, quarantined


def load_summary(rows: list[dict[str, Any]], quarantined: list[dict[str, Any]]) -> dict[str, Any]:
    """What loading did, from its own output: counts by reason, by group column, trace storage and think case."""
    from collections import Counter

    by_group: dict[str, Counter[str]] = {}
    for r in rows:
        if GROUP in r:
            by_group.setdefault(str(r[GROUP]), Counter())["ingested"] += 1
    for q in quarantined:
        if GROUP in q:
            by_group.setdefault(str(q.get(GROUP)), Counter())[q[R.REASON]] += 1
    summary: dict[str, Any] = {
        "num_in": len(rows) + len(quarantined),
        "num_out": len(rows),
        "num_quarantined": len(quarantined),
        "reasons": dict(Counter(q[R.REASON] for q in quarantined)),
    }
    if by_group:
        summary["by_group"] = {g: dict(c) for g, c in sorted(by_group.items())}
    if any(THINK_SPLIT in r for r in rows):
        summary["think_split"] = dict(Counter(r[THINK_SPLIT] for r in rows))
        summary["trace_format"] = dict(Counter(r[TRACE_FORMAT] for r in rows))
    return summary
