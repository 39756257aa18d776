"""`ray job submit` entry point of `palign compare`: check the config, join the cluster, run every method.

Run as:
    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \
        python -m jobs.compare --config jobs/configs/compare_qwen7b.yaml [--methods a,b] [key=value ...]

Same resume contract as jobs.distill: put run.run_dir on shared storage and resubmit the same command;
finished stages (shared or per method) are skipped, an interrupted one redoes only what is missing.
"""

from __future__ import annotations

import argparse
import logging
import sys

from jobs.distill import _warn_if_run_dir_is_local, join_cluster
from palign_ray.config import ConfigError, help_lines, load_config
from palign_ray.ray_env import ray_address

log = logging.getLogger("jobs.compare")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jobs.compare",
        description="Run `palign compare` as a Ray job: every method on shared stages, then the Table-1 report.",
        epilog="config keys (override with key=value):\n" + "\n".join(help_lines()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config", required=True, help="YAML config file (see jobs/configs/compare_*.yaml)"
    )
    p.add_argument(
        "--methods",
        default="",
        help="comma-separated methods (default: run.methods, else palign,full_cot)",
    )
    p.add_argument(
        "--stages", default="", help="comma-separated subset of stages, for every method"
    )
    p.add_argument(
        "overrides", nargs="*", help="dotted key=value overrides, e.g. run.run_dir=/mnt/shared/x"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        sys.stderr.write(f"jobs.compare: error: {e}\n")
        return 2
    log.info(
        "config %s → run_dir %s; Ray: %s",
        args.config,
        cfg.run.run_dir,
        ray_address(cfg.ray) or "local (no RAY_ADDRESS)",
    )
    _warn_if_run_dir_is_local(cfg)
    from palign_ray.compare import run_compare
    from palign_ray.pipeline import PipelineError

    try:
        join_cluster(cfg)
        result = run_compare(
            cfg,
            [m for m in args.methods.split(",") if m] or None,
            [s for s in args.stages.split(",") if s] or None,
        )
    except PipelineError as e:
        log.error("%s", e)
        return 3
    except (
        ValueError
    ) as e:  # a bad setting or method: nothing ran (every method's plan is validated first)
        sys.stderr.write(f"jobs.compare: error: {e}\n")
        return 2
    log.info("compare report: %s", result["report"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
