"""`ray job submit` entry point of `palign compare`: check the config, join the cluster, run every method.

Run as:
    ray job submit --entrypoint-num-cpus=1 --working-dir . --runtime-env cluster/runtime_env.yaml -- \
        python -m jobs.compare --config jobs/configs/compare_qwen7b.yaml [--methods a,b] [key=value ...]

Same resume contract as jobs.distill: put run.run_dir on shared storage and resubmit the same command;
finished stages (shared or per method) are skipped, an interrupted one redoes only what is missing.
"""

from __future__ import annotations

import argparse
import sys

from jobs.distill import job_parser, run_job, stages_of
from palign_ray.config import Config


def build_parser() -> argparse.ArgumentParser:
    p = job_parser(
        "python -m jobs.compare",
        "Run `palign compare` as a Ray job: every method on shared stages, then the Table-1 report.",
        "YAML config file (see jobs/configs/compare_*.yaml)",
    )
    p.add_argument(
        "--methods",
        default="",
        help="comma-separated methods (default: run.methods, else palign,full_cot)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    methods = [m for m in args.methods.split(",") if m] or None

    def work(cfg: Config) -> str:
        from palign_ray.compare.run import run_compare  # every method's plan is validated first

        return "compare report: " + run_compare(cfg, methods, stages_of(args))["report"]

    return run_job("jobs.compare", args, work)


if __name__ == "__main__":
    sys.exit(main())
