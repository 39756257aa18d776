"""`palign` command line: one subcommand per stage plus tools; `key=value` overrides everywhere.

Run as: palign --help   (or python -m palign_ray --help)

Every subcommand lives in this package (`stages.py`: one per pipeline stage, `tools.py`: the rest)
and goes through the helpers here, so the rules are the same everywhere:
  * `parse`: `--config YAML` plus `key=value` overrides before, between or after options; where a
    command takes a FILE, it is the one positional without '=' (an existing path always counts as FILE).
  * `finish`: rows → the output, rejected rows → `<stem>.quarantine.parquet` and the summary →
    `<stem>.summary.json` beside it, the summary JSON on stdout.
  * exit codes: 0 = rows came out, 3 = no rows came out, 2 = bad input or config.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from palign_ray.config import Config, ConfigError, help_lines, load_config
from palign_ray.console import setup_console

EXIT_ROWS = 0  # the stage wrote at least one row
EXIT_BAD_INPUT = 2  # bad arguments, config, or input file
EXIT_NO_ROWS = 3  # the stage ran but every row was quarantined (or the pipeline failed)

# name → ("module:function", one-line help). Each function takes argv (list[str]) and returns an exit code.
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": (
        "palign_ray.cli.stages:generate_main",
        "prompts (JSONL/Parquet) → generations through a Ray Data pool of vLLM engines",
    ),
    "run": (
        "palign_ray.cli.tools:run_main",
        "the whole pipeline (resumable): problems → teacher → truncate → align → sft_data → train → eval",
    ),
    "compare": (
        "palign_ray.cli.tools:compare_main",
        "several methods (palign, full_cot, fixed_ratio:R, prefix_only) on shared stages → Table-1 report",
    ),
    "config": (
        "palign_ray.cli.tools:config_main",
        "print the resolved config (YAML) after overrides",
    ),
    "teacher": (
        "palign_ray.cli.stages:teacher_main",
        "problems → one graded long-CoT trace per problem (or ingest traces)",
    ),
    "align": (
        "palign_ray.cli.stages:align_main",
        "prefixes → student continuations, kept only when the answer matches gold (Eq. 9)",
    ),
    "sft-data": (
        "palign_ray.cli.stages:sft_data_main",
        "aligned rows → tokenized SFT shards with response-only loss masks (stage sft_data)",
    ),
    "build-sft": ("palign_ray.cli.stages:sft_data_main", "alias of sft-data"),
    "truncate": (
        "palign_ray.cli.stages:truncate_main",
        "traces → shortest sufficient CoT prefixes (batched judge rounds on a vLLM actor pool)",
    ),
    "grade": (
        "palign_ray.cli.stages:grade_main",
        "grade a file of generations (no generating): per-sample labels JSONL + metrics JSON",
    ),
    "eval": (
        "palign_ray.cli.stages:eval_main",
        "pass@k of a model on math benchmarks (paper prompt/sampling) → metrics.json, report.md, plots",
    ),
    "split": (
        "palign_ray.cli.tools:split_main",
        "text (FILE or stdin) → one JSON line per sentence: index, start, end, text",
    ),
    "train": (
        "palign_ray.cli.stages:train_main",
        "SFT shards → student fine-tuned with Ray Train + DeepSpeed ZeRO → HF model dir",
    ),
}


def config_parser(
    prog: str,
    description: str,
    *,
    config_help: str = "YAML config file (default: built-in defaults)",
    config_required: bool = False,
    full_prog: str = "",
) -> argparse.ArgumentParser:
    """A parser with `--config` and trailing `key=value` overrides; `--help` lists every config key.

    `full_prog` names another front door (`python -m jobs.distill`) instead of `palign <prog>`.
    """
    epilog = "config keys (override with key=value):\n" + "\n".join(help_lines())
    p = argparse.ArgumentParser(
        prog=full_prog or f"palign {prog}",
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default=None, required=config_required, help=config_help)
    p.add_argument(
        "overrides", nargs="*", help="dotted key=value overrides, e.g. judge.threshold=0.3"
    )
    return p


def parse_config(p: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.Namespace, Config]:
    """`parse` without a FILE: options, `--config` and `key=value` overrides in any order."""
    return parse(p, argv)


FileRule = Literal["none", "required", "optional", "input", "input?"]


def add_input(p: argparse.ArgumentParser, help: str) -> None:
    """`--input PATH`, which may also be given as the positional FILE (see `parse`, file="input")."""
    p.add_argument("--input", default=None, help=help + " (or give it as the positional FILE)")


ROW_SUFFIXES = (".parquet", ".jsonl", ".json")  # what artifacts.write_rows writes (.json as JSONL)


def parse(
    p: argparse.ArgumentParser,
    argv: list[str],
    file: FileRule = "none",
    *,
    plan: Sequence[str] = (),
    output_suffixes: Sequence[str] = (),
    resumes: bool = False,
) -> tuple[argparse.Namespace, Config]:
    """Parse argv of a `config_parser` parser → (args, config); a bad key or value exits 2.

    Before any work (no input read, no Ray): `plan` names the pipeline stages whose checks the
    command runs (checks.plan_problems, as `palign run` does: ranges, model directories, files) and
    `output_suffixes` the suffixes `--output` may have. An output that exists already is replaced
    only with `--overwrite` (added to every parser with `--output`), unless the command `resumes`
    from it (train: its checkpoints).

    FILE shares the positional slot with `key=value` overrides: it is the item without '=' (or an
    existing path, so a file name may contain '='). `file="required"` needs exactly one,
    `"optional"` at most one; `args.file` is it (or None). `"input"` / `"input?"`: FILE is another
    way to give `--input` (see `add_input`), required / optional.
    """
    if file != "none":
        for action in p._actions:  # the shared positional slot also takes FILE
            if action.dest == "overrides":
                action.help = "FILE and dotted key=value overrides, in any order"
    writes = {a.dest for a in p._actions} & {"output", "labels_out"}
    if writes and not resumes and "overwrite" not in {a.dest for a in p._actions}:
        p.add_argument(
            "--overwrite",
            action="store_true",
            help="replace an existing output (with its .quarantine.parquet and .summary.json)",
        )
    args = p.parse_intermixed_args(argv)
    files = (
        [a for a in args.overrides if "=" not in a or os.path.isfile(a)] if file != "none" else []
    )
    if file == "required" and len(files) != 1:
        p.error(f"expected exactly one FILE (and key=value overrides), got {files or 'none'}")
    if file == "optional" and len(files) > 1:
        p.error(f"at most one FILE, got {files}")
    args.file = files[0] if files else None
    if file in ("input", "input?"):
        if args.file and args.input and args.file != args.input:
            p.error(f"two inputs: FILE {args.file} and --input {args.input}")
        args.input = args.input or args.file
        if file == "input" and not args.input:
            p.error("an input is required: FILE or --input FILE")
    try:
        cfg = load_config(args.config, [a for a in args.overrides if a not in files])
    except ConfigError as e:
        p.error(str(e))
    problem = overlap(
        [getattr(args, k, None) for k in ("input", "file", "data")],
        [getattr(args, k, None) for k in ("output", "labels_out")],
    )
    if problem:
        p.error(problem)
    from palign_ray.checks import plan_problems

    problems = plan_problems(cfg, plan) if plan else []
    output = getattr(args, "output", None)
    if output and output_suffixes and Path(output).suffix not in output_suffixes:
        problems.append(f"--output {output}: use a {' or '.join(output_suffixes)} file")
    if writes and not resumes and not args.overwrite:
        problems += existing_outputs([getattr(args, d, None) for d in sorted(writes)])
    refuse(p, problems)
    return args, cfg


def existing_outputs(outputs: list[Any]) -> list[str]:
    """One line per output that is there already (a file, or a directory with anything in it)."""
    from palign_ray.artifacts import quarantine_path

    out = []
    for o in (Path(o) for o in outputs if o):
        there = [
            str(w)
            for w in (o, quarantine_path(o), summary_path(o))
            if w.is_file() or (w.is_dir() and any(w.iterdir()))
        ]
        if there:
            out.append(
                f"--output {o}: {', '.join(there)} exist(s); pass --overwrite to replace, "
                "or choose another path"
            )
    return out


def refuse(p: argparse.ArgumentParser, problems: list[str]) -> None:
    """Exit 2 naming every problem (none: return); called before a command reads or starts anything."""
    if problems:
        p.error(
            f"{len(problems)} problem(s), nothing was run:\n"
            + "\n".join(f"  - {m}" for m in problems)
        )


def overlap(inputs: list[Any], outputs: list[Any]) -> str | None:
    """Why writing `outputs` would destroy an input (the same path, one inside the other), or None.

    Every file a command writes counts: the output, its `.quarantine.parquet` and `.summary.json`.
    Checked before any work, so a refused command has read and written nothing.
    """
    from palign_ray.artifacts import quarantine_path

    ins = {Path(i).resolve(): str(i) for i in inputs if i}
    for o in (o for o in outputs if o):
        out = Path(o)
        for written in (out, quarantine_path(out), summary_path(out)):
            w = written.resolve()
            for i, given in ins.items():
                if w == i or i in w.parents or w in i.parents:
                    return (
                        f"output {o} would overwrite or delete the input {given} "
                        f"({written} {'is' if w == i else 'overlaps'} it); choose another output path"
                    )
    return None


def summary_path(output: Path) -> Path:
    """`<dir>/<stem>.summary.json` beside an output file or directory."""
    from palign_ray.artifacts import quarantine_path

    return quarantine_path(output).with_name(
        quarantine_path(output).name.replace(".quarantine.parquet", ".summary.json")
    )


def exit_code(num_out: int) -> int:
    return EXIT_ROWS if num_out else EXIT_NO_ROWS


def finish(
    output: str | Path,
    summary: dict[str, Any],
    num_out: int,
    *,
    rows: list[dict[str, Any]] | None = None,
    quarantined: list[dict[str, Any]] | None = None,
    schema: Any = None,
    quarantine_schema: Any = None,
    shown: dict[str, Any] | None = None,
    stdout: bool = True,
) -> int:
    """Write a stage's files the one way every stage does and return its exit code.

    `rows` → `output` (by suffix; with `schema`, exactly its columns), `quarantined` →
    `<stem>.quarantine.parquet`, `summary` → `<stem>.summary.json`; `shown` (default the summary)
    goes to stdout. Stages that wrote their rows themselves (SFT shards) pass rows=None.
    """
    from palign_ray.artifacts import (
        quarantine_path,
        uniform_rows,
        write_json,
        write_parquet,
        write_rows,
    )

    out = Path(output)
    if rows is not None:
        if schema is not None:
            write_parquet(out, rows, schema)
        else:
            write_rows(out, uniform_rows(rows))
    if quarantined is not None:
        if quarantine_schema is not None:
            write_parquet(quarantine_path(out), quarantined, quarantine_schema)
        else:
            write_parquet(quarantine_path(out), uniform_rows(quarantined))
    write_json(summary_path(out), summary)
    if stdout:
        sys.stdout.write(
            json.dumps(summary if shown is None else shown, indent=1, default=str) + "\n"
        )
    return exit_code(num_out)


def _resolve(target: str) -> Callable[[list[str]], int]:
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    setup_console()  # INFO to stderr; `palign run` narrows it (see palign_ray.console)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        width = max(len(n) for n in COMMANDS)
        lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in sorted(COMMANDS.items())]
        out = sys.stdout if (not argv or argv[0] in ("-h", "--help")) else sys.stderr
        if argv and argv[0] not in ("-h", "--help"):
            out.write(f"palign: unknown command {argv[0]!r}\n")
        out.write(
            "usage: palign COMMAND [args] [key=value ...]\n\ncommands:\n"
            + "\n".join(lines)
            + "\n\nexit codes: 0 rows out, 3 no rows out (all quarantined, or the pipeline failed), "
            "2 bad input or config\n"
        )
        return 0 if out is sys.stdout else EXIT_BAD_INPUT
    try:
        return _resolve(COMMANDS[argv[0]][0])(argv[1:])
    except (ConfigError, FileNotFoundError, ValueError) as e:
        sys.stderr.write(f"palign {argv[0]}: error: {e}\n")
        return EXIT_BAD_INPUT
    except OSError as e:  # a path that is a directory, unreadable, read-only, on a full disk
        sys.stderr.write(f"palign {argv[0]}: error: {e} (check the path and its permissions)\n")
        return EXIT_BAD_INPUT
    except RecursionError:  # e.g. a JSON line nested thousands deep
        sys.stderr.write(
            f"palign {argv[0]}: error: an input is nested too deeply to read (a JSON line with "
            "thousands of nested brackets?); fix or drop that line\n"
        )
        return EXIT_BAD_INPUT
