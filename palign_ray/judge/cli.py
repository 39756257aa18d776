"""`palign truncate`: traces (JSONL/Parquet) → kept prefixes (Parquet), quarantine and a summary.

Run as: palign truncate --input traces.jsonl --output prefixes.parquet [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from palign_ray import records as R
from palign_ray.artifacts import write_parquet

DRAFT_MARKERS = re.compile(
    r"<(?:Begin|End)_of_(?:Draft|Prefix)>"
)  # the authors' released outputs carry these
QUARANTINE_COLUMNS = (R.STAGE, R.PROBLEM_ID, R.REASON, R.DETAIL)


def _parser() -> argparse.ArgumentParser:
    from palign_ray.cli import config_parser

    p = config_parser(
        "truncate", "Keep the shortest CoT prefix the judge calls sufficient (judge.* settings)."
    )
    p.add_argument("--input", required=True, help="JSONL/Parquet traces")
    p.add_argument(
        "--output",
        required=True,
        help="output .parquet; <stem>.quarantine.parquet and <stem>.summary.json go beside it",
    )
    p.add_argument("--question-field", default="question", help="field holding the question")
    p.add_argument(
        "--cot-field",
        default="cot",
        help="field holding the reasoning trace (a string or a list of strings)",
    )
    p.add_argument(
        "--answer-field",
        default="answer",
        help="field holding the gold answer (optional in the data)",
    )
    p.add_argument("--id-field", default="", help="field holding a stable id (default: row number)")
    p.add_argument(
        "--cot-index",
        default="",
        help="for a list CoT field: comma-separated indices, one trace each (e.g. 0,1); "
        "ids become <id>-<index>",
    )
    p.add_argument(
        "--strip-prompt-prefix",
        default="",
        help="remove this text from the start of the question "
        "(e.g. the authors' 'Please reason step by step, ...' instruction)",
    )
    p.add_argument(
        "--keep-markers",
        action="store_true",
        help="keep <Begin_of_Draft>/<End_of_Draft> markers in the CoT (stripped by default)",
    )
    p.add_argument("--limit", type=int, default=0, help="use the first N traces only (0 = all)")
    return p


def traces_from_rows(
    rows: list[dict[str, Any]], args: argparse.Namespace
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Input rows → truncate rows {problem_id, question, cot, answer}, plus quarantine rows for unusable ones."""
    from palign_ray.artifacts import quarantine_row

    indices = [int(i) for i in args.cot_index.split(",") if i.strip()] if args.cot_index else []
    out: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    for n, row in enumerate(rows):
        base = (
            str(row.get(args.id_field))
            if args.id_field and row.get(args.id_field) is not None
            else str(n)
        )
        question = row.get(args.question_field)
        if (
            isinstance(question, str)
            and args.strip_prompt_prefix
            and question.startswith(args.strip_prompt_prefix)
        ):
            question = question[len(args.strip_prompt_prefix) :].lstrip()
        cot = row.get(args.cot_field)
        picks: list[tuple[str, Any]] = [(base, cot)]
        if isinstance(cot, list):
            if not indices:
                bad.append(
                    quarantine_row(
                        "truncate",
                        base,
                        "cot_is_list",
                        f"field {args.cot_field!r} is a list; pass --cot-index",
                    )
                )
                continue
            picks = [
                (f"{base}-{i}", cot[i] if -len(cot) <= i < len(cot) else None) for i in indices
            ]
        for pid, text in picks:
            if text is not None and not isinstance(text, str):
                bad.append(
                    quarantine_row(
                        "truncate",
                        pid,
                        "cot_not_text",
                        f"field {args.cot_field!r} is {type(text).__name__}",
                    )
                )
                continue
            if isinstance(text, str) and not args.keep_markers:
                text = DRAFT_MARKERS.sub("", text)
            out.append(
                {
                    R.PROBLEM_ID: pid,
                    R.QUESTION: question,
                    R.COT: text,
                    R.ANSWER: row.get(args.answer_field),
                }
            )
    return out, bad


def output_paths(output: str) -> tuple[Path, Path, Path]:
    p = Path(output)
    if p.suffix != ".parquet":
        raise ValueError(f"--output {p}: use a .parquet file")
    return p, p.with_name(p.stem + ".quarantine.parquet"), p.with_name(p.stem + ".summary.json")


def write_table(path: Path, rows: list[dict[str, Any]], schema: Any) -> None:
    """Atomic Parquet write with an explicit schema."""
    write_parquet(path, rows, schema)


def truncate_main(argv: list[str]) -> int:
    """Run as: palign truncate --input traces.jsonl --output prefixes.parquet [judge.search=kary ...]"""
    import pyarrow as pa

    from palign_ray.artifacts import read_rows, write_json
    from palign_ray.cli import parse_config
    from palign_ray.judge.rounds import output_schema
    from palign_ray.judge.stage import truncate_rows

    args, cfg = parse_config(_parser(), argv)
    out_path, quarantine_path, summary_path = output_paths(args.output)
    rows, read_bad = read_rows(args.input, "truncate")
    traces, bad = traces_from_rows(rows, args)
    if args.limit:
        traces = traces[: args.limit]
    out, quarantined, summary = truncate_rows(traces, cfg)
    quarantined = read_bad + bad + quarantined
    summary.update(
        input=str(args.input),
        output=str(out_path),
        num_input_rows=len(rows),
        num_read_rejected=len(read_bad) + len(bad),
        num_quarantined_total=len(quarantined),
    )
    write_table(out_path, out, output_schema())
    write_table(
        quarantine_path, quarantined, pa.schema([(c, pa.string()) for c in QUARANTINE_COLUMNS])
    )
    write_json(summary_path, summary)
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    return 0
