"""`ray job submit` entry point: reject a bad config before anything starts, then run the pipeline.

Run as:
    ray job submit --entrypoint-num-cpus=1 --working-dir . --runtime-env cluster/runtime_env.yaml -- \
        python -m jobs.distill --config jobs/configs/default.yaml [--stages a,b] [key=value ...]

Under `ray job submit` Ray sets RAY_ADDRESS (the cluster's GCS address) in the driver's environment,
so palign_ray.ray_env.init_ray joins that cluster instead of starting a local Ray.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from palign_ray.cli import EXIT_BAD_INPUT, EXIT_NO_ROWS, EXIT_ROWS, config_parser
from palign_ray.config import Config, ConfigError, load_config
from palign_ray.ray_env import ray_address

log = logging.getLogger("jobs")


def job_parser(
    prog: str, description: str, config_help: str = "YAML config file (see jobs/configs/)"
) -> argparse.ArgumentParser:
    """The CLI's parser (`--config`, key=value overrides, every config key in --help) with --config
    required and `--stages`: what every job entry point takes."""
    p = config_parser(
        "", description, config_help=config_help, config_required=True, full_prog=prog
    )
    p.add_argument(
        "--stages", default="", help="comma-separated subset of stages, e.g. problems,teacher"
    )
    return p


def build_parser() -> argparse.ArgumentParser:
    return job_parser(
        "python -m jobs.distill",
        "Run the P-ALIGN pipeline as a Ray job (same stages and resume as `palign run`).",
    )


def stages_of(args: argparse.Namespace) -> list[str] | None:
    return [s for s in args.stages.split(",") if s] or None


def _warn_if_run_dir_is_local(cfg: Config) -> None:
    # A job's working directory is a temporary copy on the head node; a relative run_dir would put
    # every stage output (and the resume state a retry needs) there and lose it with the cluster.
    if ray_address(cfg.ray) and not os.path.isabs(cfg.run.run_dir):
        log.warning(
            "run.run_dir=%r is relative: on a cluster it lands in the job's temporary working "
            "directory and is lost with it; use shared storage, e.g. run.run_dir=/mnt/shared/palign/runs/NAME",
            cfg.run.run_dir,
        )


def join_cluster(cfg: Config) -> None:
    """Connect before the first stage: a wrong address fails now, and the log shows what the job got."""
    if not ray_address(cfg.ray):
        return  # a local run: stages start a loopback Ray when they need one
    from palign_ray.ray_env import init_ray

    ray = init_ray(cfg.ray)  # idempotent: the stages' own init_ray calls reuse this connection
    log.info(
        "joined Ray cluster at %s: %d node(s), resources %s",
        ray.get_runtime_context().gcs_address,
        len(ray.nodes()),
        {k: v for k, v in sorted(ray.cluster_resources().items()) if k in ("CPU", "GPU", "memory")},
    )


def run_job(prog: str, args: argparse.Namespace, work: Callable[[Config], str]) -> int:
    """Load and check the config, join the cluster, `work(cfg)`; exit with the CLI's codes: 0, 2 (bad
    config: nothing ran) or 3 (a stage failed)."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        sys.stderr.write(f"{prog}: error: {e}\n")
        return EXIT_BAD_INPUT
    log.info(
        "config %s → run_dir %s; Ray: %s",
        args.config,
        cfg.run.run_dir,
        ray_address(cfg.ray) or "local (no RAY_ADDRESS)",
    )
    _warn_if_run_dir_is_local(cfg)
    from palign_ray.pipeline import PipelineError

    try:
        join_cluster(cfg)
        # every planned stage's settings are validated before the first stage starts
        done = work(cfg)
    except PipelineError as e:
        log.error("%s", e)
        return EXIT_NO_ROWS
    except ValueError as e:  # a bad setting (or method): nothing ran
        sys.stderr.write(f"{prog}: error: {e}\n")
        return EXIT_BAD_INPUT
    log.info("%s", done)
    return EXIT_ROWS


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))

    def work(cfg: Config) -> str:
        from palign_ray.pipeline import run_pipeline

        return "finished stages " + ", ".join(run_pipeline(cfg, stages_of(args)))

    return run_job("jobs.distill", args, work)


if __name__ == "__main__":
    sys.exit(main())
