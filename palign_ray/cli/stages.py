"""One subcommand per pipeline stage: parse (`cli.parse`), call the stage's `run_*`, `cli.finish`.

Heavy packages (ray, vllm, torch) are imported inside the commands, by the stage code they call.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

from palign_ray.cli import EXIT_ROWS, ROW_SUFFIXES, add_input, config_parser, finish, parse, refuse
from palign_ray.config import Config

log = logging.getLogger("palign")


def teacher_main(argv: list[str]) -> int:
    """Run as: palign teacher --output traces.parquet [--input problems.jsonl] [key=value ...]"""
    from palign_ray.artifacts import uniform_rows
    from palign_ray.decontam import screen_problems
    from palign_ray.problems import load_problems, load_summary
    from palign_ray.teacher import run_teacher

    p = config_parser(
        "teacher", "Problems → one graded long-CoT trace per problem (teacher.*, problems.*)."
    )
    add_input(p, "problems JSONL/Parquet/datasets dir (default: problems.source, builtin)")
    p.add_argument("--output", required=True, help="output traces .parquet or .jsonl")
    args, cfg = parse(p, argv, file="input?", plan=("teacher",), output_suffixes=ROW_SUFFIXES)
    problems, bad = load_problems(cfg.problems, args.input)
    problems, screened, screen = screen_problems(problems, cfg)  # the problems stage's screen
    bad = uniform_rows(bad + screened)
    out, quar, summary = run_teacher(problems, cfg)
    summary["screen"] = screen
    summary["problems_quarantined"] = len(bad)
    summary["problems"] = load_summary(problems, bad)
    return finish(args.output, summary, len(out), rows=out, quarantined=bad + quar)


def _truncate_parser() -> Any:
    p = config_parser(
        "truncate", "Keep the shortest CoT prefix the judge calls sufficient (judge.* settings)."
    )
    add_input(p, "JSONL/Parquet traces")
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


def truncate_main(argv: list[str]) -> int:
    """Run as: palign truncate --input traces.jsonl --output prefixes.parquet [judge.search=kary ...]"""
    import pyarrow as pa

    from palign_ray.artifacts import read_rows
    from palign_ray.judge.contract import output_schema
    from palign_ray.judge.ingest import QUARANTINE_COLUMNS, traces_from_rows
    from palign_ray.judge.stage import truncate_rows

    args, cfg = parse(
        _truncate_parser(), argv, file="input", plan=("truncate",), output_suffixes=(".parquet",)
    )
    rows, read_bad = read_rows(args.input, "truncate")
    traces, bad = traces_from_rows(
        rows,
        question_field=args.question_field,
        cot_field=args.cot_field,
        answer_field=args.answer_field,
        id_field=args.id_field,
        cot_indices=[int(i) for i in args.cot_index.split(",") if i.strip()],
        strip_prompt_prefix=args.strip_prompt_prefix,
        keep_markers=args.keep_markers,
    )
    skipped = traces[args.limit :] if args.limit else []
    traces = traces[: args.limit] if args.limit else traces
    out, quarantined, summary = truncate_rows(traces, cfg)
    quarantined = read_bad + bad + quarantined
    summary.update(
        input=str(args.input),
        output=str(args.output),
        num_input_rows=len(rows),
        # --limit: rows read but not judged, counted so that in = out + quarantined + skipped
        num_skipped_by_limit=len(skipped),
        num_read_rejected=len(read_bad) + len(bad),
        num_quarantined_total=len(quarantined),
    )
    return finish(
        args.output,
        summary,
        len(out),
        rows=out,
        quarantined=quarantined,
        schema=output_schema(),
        quarantine_schema=pa.schema([(c, pa.string()) for c in QUARANTINE_COLUMNS]),
    )


def align_main(argv: list[str]) -> int:
    """Run as: palign align --input prefixes.parquet --output aligned.parquet [key=value ...]"""
    from palign_ray import records as R
    from palign_ray.align import REQUIRED, STAGE, check_prefix_rows, run_align
    from palign_ray.artifacts import read_rows, retention

    p = config_parser(
        "align",
        "Prefix rows (problem_id, question, answer, prefix) → filtered student continuations (align.*).",
    )
    add_input(p, "prefix rows: Parquet/JSONL from the truncation stage or your own")
    p.add_argument("--output", required=True, help="output .parquet or .jsonl of accepted rows")
    args, cfg = parse(p, argv, file="input", plan=("align",), output_suffixes=ROW_SUFFIXES)
    rows, bad = read_rows(args.input, STAGE)
    columns = set().union(*(r.keys() for r in rows)) if rows else set(REQUIRED)
    R.require_columns(STAGE, columns, REQUIRED, str(args.input))  # a wrong file: one clear error
    num_in = len(rows)
    # the whole file read once before any engine starts: a repeated id in another part is caught too
    rows, rejected = check_prefix_rows(rows)
    out, quar, summary = run_align(rows, cfg) if rows else ([], [], {})
    summary.update(retention(STAGE, num_in, out, rejected + quar))  # every row of the file counted
    summary.update(unreadable_rows=len(bad), num_read_rejected=len(rejected))
    return finish(args.output, summary, len(out), rows=out, quarantined=bad + rejected + quar)


def sft_data_main(argv: list[str]) -> int:
    """Run as: palign sft-data (alias build-sft) --input aligned.parquet --output shards_dir/ [--method palign | --format alpaca] [key=value ...]"""
    from palign_ray.artifacts import read_rows
    from palign_ray.sft.records import METHODS, STAGE, build_shards
    from palign_ray.sft_formats import FORMATS

    p = config_parser(
        "sft-data",
        "Stage rows → tokenized SFT shards with response-only loss masks (align.*, sft.model).",
    )
    add_input(
        p,
        "aligned rows (palign/fixed_ratio/continuation_only), traces (full_cot) or prefixes (prefix_only)",
    )
    p.add_argument("--output", required=True, help="output directory of part-*.parquet shards")
    p.add_argument(
        "--method", default=None, choices=METHODS, help="response format (default: run.method)"
    )
    p.add_argument(
        "--format",
        default="",
        choices=("", *FORMATS),
        help="--input is an existing SFT file: alpaca (instruction/input/output), sharegpt (conversations) "
        "or messages (role/content); the response is trained on as written (markers stay text)",
    )
    p.add_argument(
        "--join",
        default="",
        help="alpaca: text between instruction and input (default none: the paper's prompt "
        "glues them, as evaluation does; LLaMA-Factory uses a newline)",
    )
    args, cfg = parse(p, argv, file="input", plan=("sft_data",))
    if args.format and args.method:
        p.error(
            "--method builds responses from stage rows; with --format the file's responses are used as they are"
        )
    rows, bad = read_rows(args.input, STAGE)
    out = Path(args.output)
    summary = build_shards(  # writes the shards and <dir>.quarantine.parquet itself
        rows,
        cfg,
        args.method or cfg.run.method,
        out,
        extra_quarantine=tuple(bad),
        fmt=args.format,
        join=args.join,
    )
    return finish(out, summary, summary["num_examples"])


def train_main(argv: list[str]) -> int:
    """Run as: palign train --data SHARDS_DIR --output MODEL_DIR [sft.zero_stage=3 sft.lora=true ...]"""
    from palign_ray.sft.train import run_sft

    p = config_parser(
        "train",
        "Fine-tune sft.model on SFT shards with Ray Train + DeepSpeed ZeRO; export an HF model.",
    )
    p.add_argument(
        "--data", required=True, help="directory of part-*.parquet SFT shards (+ sft_meta.json)"
    )
    p.add_argument(
        "--output",
        required=True,
        help="model directory: exported weights, metrics.json, ray_train/ checkpoints",
    )
    args, cfg = parse(p, argv, plan=("train",), resumes=True)  # resumes from its checkpoints
    metrics = run_sft(cfg.sft, args.data, args.output, seed=cfg.run.seed, ray_cfg=cfg.ray)
    keys = (
        "num_examples",
        "num_quarantined",
        "num_steps",
        "final_loss",
        "mean_step_time_s",
        "mean_tokens_per_s",
        "padding_share_packed",
        "padding_share_unpacked",
        "wall_time_s",
    )
    sys.stdout.write(json.dumps({k: metrics[k] for k in keys}) + "\n")
    return EXIT_ROWS


def eval_main(argv: list[str]) -> int:
    """Run as: palign eval --model PATH --benchmarks gsm8k,math500 --output DIR [key=value ...] | --compare a.json b.json"""
    from palign_ray.eval.report import compare_table, markdown_table
    from palign_ray.eval.stage import evaluate

    p = config_parser(
        "eval",
        "Generate with the paper's prompt and sampling, grade, and write metrics.json, report.md, plots.",
    )
    p.add_argument(
        "--model",
        default="",
        help="model to evaluate: 'default' (embedded SmolLM2) or an HF directory (default: eval.model)",
    )
    p.add_argument(
        "--benchmarks", default="", help="comma-separated names or files (default: eval.benchmarks)"
    )
    p.add_argument(
        "--output",
        default="",
        help="output directory for metrics.json, report.md, samples.jsonl, *.png",
    )
    p.add_argument(
        "--compare",
        nargs="+",
        default=None,
        metavar="METRICS_JSON",
        help="print one table comparing runs and exit",
    )
    args, cfg = parse(p, argv)
    if args.compare:
        sys.stdout.write(compare_table(args.compare))
        return EXIT_ROWS
    if not args.output:
        p.error("--output DIR is required (unless --compare)")
    if args.benchmarks:
        names = tuple(b.strip() for b in args.benchmarks.split(",") if b.strip())
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, benchmarks=names))
    from palign_ray.checks import model_problems, plan_problems

    model = args.model or cfg.eval.model
    refuse(
        p,
        plan_problems(cfg, ("eval",))
        + model_problems("--model" if args.model else "eval.model", model),
    )
    metrics = evaluate(cfg, args.output, model=args.model or None)
    sys.stdout.write(markdown_table(metrics))
    return EXIT_ROWS


def grade_main(argv: list[str]) -> int:
    """Run as: palign grade FILE.jsonl [--question-field prompt_ori] [--answer-field answer] [--output-field output] [--labels-out labels.jsonl]"""
    from palign_ray.artifacts import write_jsonl
    from palign_ray.eval.files import grade_file
    from palign_ray.eval.score import GENERATION

    p = config_parser(
        "grade",
        "Grade a file of generations (no generation); labels → JSONL, metrics JSON → stdout.",
    )
    p.usage = "palign grade FILE.jsonl [--question-field F] [--answer-field F] [--output-field F] [--labels-out PATH] [key=value ...]"
    p.add_argument(
        "--question-field",
        default="prompt_ori",
        help="column holding the question (kept for reference)",
    )
    p.add_argument("--answer-field", default="answer", help="column holding the gold answer")
    p.add_argument(
        "--output-field",
        default="output",
        help="column holding the generations (a list of samples or one string)",
    )
    p.add_argument(
        "--id-field", default="", help="column holding a problem id (default: row number)"
    )
    p.add_argument(
        "--labels-out",
        default="",
        help="per-sample labels JSONL (default: ./<file stem>.labels.jsonl); "
        "<stem>.quarantine.parquet and <stem>.summary.json (the metrics) go beside it",
    )
    args, cfg = parse(p, argv, file="required")
    metrics, samples, bad = grade_file(
        args.file,
        cfg.eval,
        args.question_field,
        args.answer_field,
        args.output_field,
        args.id_field,
        cfg.run.seed,
    )
    labels_out = args.labels_out or f"{Path(args.file).stem}.labels.jsonl"
    # any suffix is allowed for labels (always JSONL), so they are written here, not by finish
    write_jsonl(labels_out, [{k: v for k, v in s.items() if k != GENERATION} for s in samples])
    for b in bad:
        sys.stderr.write(f"quarantined: {json.dumps(b)}\n")
    shown = dict(metrics)
    agreement = metrics.get("reference_agreement")
    if agreement:  # the full list is in the summary file; keep stdout to one readable object
        shown["reference_agreement"] = {
            **agreement,
            "disagreements": agreement["disagreements"][:50],
        }
    log.info(
        "graded %d samples from %s → %s (%d rows quarantined)",
        len(samples),
        args.file,
        labels_out,
        len(bad),
    )
    return finish(labels_out, metrics, len(samples), quarantined=bad, shown=shown)


def generate_main(argv: list[str]) -> int:
    """Run as: palign generate --input prompts.jsonl --output gens.parquet [teacher.max_tokens=64 ...]"""
    from palign_ray import records as R
    from palign_ray.artifacts import read_rows, retention

    p = config_parser(
        "generate", "Generate from prompts with the teacher.* model and sampling settings."
    )
    add_input(p, "JSONL/Parquet with a prompt column")
    p.add_argument(
        "--output",
        required=True,
        help="output .jsonl or .parquet; <stem>.quarantine.parquet and <stem>.summary.json go beside it",
    )
    p.add_argument("--prompt-field", default="prompt", help="column holding the prompt text")
    p.add_argument("--id-field", default="", help="column holding a row id (default: row number)")
    args, cfg = parse(p, argv, file="input", plan=("teacher",), output_suffixes=ROW_SUFFIXES)
    rows, bad = read_rows(args.input, "generate")
    items, rejected = prompt_items(rows, args.prompt_field, args.id_field)
    bad += rejected
    out, lost = _generate(items, cfg) if items else ([], [])  # no usable prompt: no engine starts
    bad += lost
    for r in out[:3]:  # stdout: a preview of the first generations (the summary is in the file)
        sys.stdout.write(
            json.dumps(
                {
                    "problem_id": r[R.PROBLEM_ID],
                    "prompt": r[R.PROMPT][:80],
                    "generation": r[R.GENERATIONS][0][:300] if r[R.GENERATIONS] else "",
                }
            )
            + "\n"
        )
    gen_tokens = sum(sum(r[R.NUM_GENERATED_TOKENS]) for r in out)
    log.info(
        "wrote %d generations (%d tokens) to %s; %d rows rejected",
        len(out),
        gen_tokens,
        args.output,
        len(bad),
    )
    for b in bad:
        sys.stderr.write(f"rejected: {json.dumps(b)}\n")
    summary = retention("generate", len(rows), out, bad, generated_tokens=gen_tokens)
    return finish(args.output, summary, len(out), rows=out, quarantined=bad, stdout=False)


def prompt_items(
    rows: list[dict[str, Any]], prompt_field: str, id_field: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows → ({problem_id, prompt} items, quarantine), read the problems stage's way: a missing prompt
    (`missing_prompt`), one of the wrong type (`wrong_type`, never stringified), a repeated id."""
    from palign_ray import records as R
    from palign_ray.artifacts import quarantine_row
    from palign_ray.fields import DUPLICATE, read_id, read_text

    items, bad, seen = [], [], set()
    for n, row in enumerate(rows):
        ident = read_id(row, id_field, n)
        prompt = read_text(row.get(prompt_field), prompt_field, "prompt")
        why = next(((p.reason, p.detail) for p in (ident, prompt) if p.reason), None)
        if why is None and ident.value in seen:
            why = (DUPLICATE, f"id {ident.value!r} came earlier in the input")
        if why is not None:
            bad.append(quarantine_row("generate", ident.value, *why))
            continue
        seen.add(ident.value)
        items.append({R.PROBLEM_ID: ident.value, R.PROMPT: prompt.value})
    return items, bad


def _generate(
    items: list[dict[str, Any]], cfg: Config
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Prompts → (generation rows in input order, each with its prompt; quarantine). A streaming job:
    parts through one engine pool. Every prompt becomes a row (an engine refusal is the row's `error`);
    only a prompt the stage lost after its retries is quarantined (`lost_in_stage`, `not_processed`)."""
    from palign_ray import records as R
    from palign_ray.generation import generate_job
    from palign_ray.streaming import run_rows

    out, quar, _, _ = run_rows(generate_job(cfg, len(items)), items)
    if (
        quar
    ):  # the worker writes every prompt as a row: only a part lost after its retries lands here
        raise RuntimeError(f"generation left {len(quar)} prompts without a row: {quar[:3]}")
    by_id = {i[R.PROBLEM_ID]: (n, i[R.PROMPT]) for n, i in enumerate(items)}  # ids are unique here
    for r in out:
        r[R.PROMPT] = by_id[r[R.PROBLEM_ID]][1]
    out.sort(key=lambda r: by_id[r[R.PROBLEM_ID]][0])  # input order (ids may mix "10" and "a")
    return out, quar
