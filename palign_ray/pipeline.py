"""The spine: problems → teacher → truncate → align → sft_data → train → eval, resumable, one directory per stage.

Run as: palign run jobs/configs/default.yaml [--stages a,b] [key=value ...]

Every stage writes `<run_dir>/<stage>/` (atomic part files, quarantine/ with reasons, manifest.json
last). Re-running resumes: a stage whose manifest carries the current config hash is skipped; an
interrupted row stage processes only the problem_ids that have neither output nor quarantine yet
(in chunks of run.chunk_size, so a crash loses at most one chunk); a changed config section
changes that stage's hash and, through the chain of hashes, every stage after it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from palign_ray import records as R
from palign_ray.artifacts import StageDir, write_json
from palign_ray.config import Config, config_hash, to_dict

log = logging.getLogger(__name__)

RowFn = Callable[[list[dict[str, Any]], Config], tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]]


class PipelineError(RuntimeError):
    """A stage cannot go on (e.g. it produced no rows); the message names the stage and the reasons."""


# --------------------------------------------------------------------------------------------
# Stage bodies: thin adapters over the stage modules (imported lazily: they pull Ray/vLLM/torch).


def problems_stage(cfg: Config) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from palign_ray.problems import load_problems

    return load_problems(cfg.problems)


def teacher_stage(rows: list[dict[str, Any]], cfg: Config) -> tuple[list[dict], list[dict], dict[str, Any]]:
    from palign_ray.teacher import run_teacher

    return run_teacher(rows, cfg)


def truncate_stage(rows: list[dict[str, Any]], cfg: Config) -> tuple[list[dict], list[dict], dict[str, Any]]:
    from palign_ray.judge.rounds import truncate_rows

    return truncate_rows(rows, cfg)


def align_stage(rows: list[dict[str, Any]], cfg: Config) -> tuple[list[dict], list[dict], dict[str, Any]]:
    from palign_ray.align import run_align

    return run_align(rows, cfg)


def sft_data_stage(rows: list[dict[str, Any]], cfg: Config, out_dir: Path) -> dict[str, Any]:
    from palign_ray.sft_records import build_shards

    stage_dir = out_dir.parent
    return build_shards(rows, cfg, method=cfg.run.method, out_dir=out_dir,
                        quarantine_file=stage_dir / "quarantine" / "part-sft.parquet")


def train_stage(cfg: Config, data_dir: Path, out_dir: Path, resume: bool) -> dict[str, Any]:
    from palign_ray.sft.train import run_sft

    sft = dataclasses.replace(cfg.sft, resume=resume or cfg.sft.resume)
    return run_sft(sft, data_dir, out_dir, seed=cfg.run.seed, ray_cfg=cfg.ray)


def train_started(out_dir: Path) -> bool:
    """An interrupted training left its Ray Train run directory: continue it from its last checkpoint."""
    from palign_ray.sft.train import run_dir_of

    return run_dir_of(out_dir).is_dir()


def eval_stage(cfg: Config, out_dir: Path, model: str) -> dict[str, Any]:
    from palign_ray.evaluate import evaluate

    return evaluate(cfg, out_dir, model=model)


# --------------------------------------------------------------------------------------------
# Which stages a method runs, and what invalidates them


@dataclass(frozen=True)
class StageSpec:
    name: str
    sections: tuple[str, ...]  # config sections whose change invalidates this stage
    input_stage: str | None  # rows come from this stage's output


ALL_STAGES: tuple[StageSpec, ...] = (
    StageSpec("problems", ("problems",), None),
    StageSpec("teacher", ("teacher", "engine"), "problems"),
    StageSpec("truncate", ("judge", "engine"), "teacher"),
    StageSpec("align", ("align", "engine"), "truncate"),
    StageSpec("sft_data", ("align",), "align"),
    StageSpec("train", ("sft",), None),
    StageSpec("eval", ("eval", "engine"), None),
)
STAGE_NAMES = tuple(s.name for s in ALL_STAGES)


def effective_config(cfg: Config) -> Config:
    """Method-specific settings: fixed_ratio truncation needs no judge."""
    if cfg.run.method == "fixed_ratio":
        return dataclasses.replace(cfg, judge=dataclasses.replace(cfg.judge, search="fixed_ratio"))
    return cfg


def stages_for(cfg: Config) -> list[StageSpec]:
    """full_cot trains on whole traces (no truncation, no continuation); prefix_only skips continuation."""
    skip = {"full_cot": {"truncate", "align"}, "prefix_only": {"align"}}.get(cfg.run.method, set())
    plan = []
    for s in ALL_STAGES:
        if s.name in skip:
            continue
        if s.name == "sft_data":
            prev = [p.name for p in plan if p.name in ("teacher", "truncate", "align")][-1]
            s = dataclasses.replace(s, input_stage=prev)
        plan.append(s)
    return plan


def stage_hashes(cfg: Config, plan: list[StageSpec]) -> dict[str, str]:
    """Chained hashes: a stage's hash covers its sections, the run seed/method and every earlier stage."""
    hashes: dict[str, str] = {}
    prev = config_hash(cfg.run)  # run_dir and chunk_size are not hashed: a moved run still resumes
    for s in plan:
        h = config_hash(*(getattr(cfg, sec) for sec in s.sections))
        hashes[s.name] = prev = hashlib.sha256(f"{s.name}:{h}:{prev}".encode()).hexdigest()[:16]
    return hashes


# --------------------------------------------------------------------------------------------
# Running


def _prepare(sd: StageDir, h: str) -> None:
    """Start or resume a stage dir; a dir left by another config is cleared (its rows are stale)."""
    marker = sd.root / ".config_hash"
    if sd.root.exists() and (not marker.is_file() or marker.read_text().strip() != h):
        log.info("stage %s: config changed, recomputing", sd.root.name)
        sd.reset()
    sd.root.mkdir(parents=True, exist_ok=True)
    marker.write_text(h)


def _check_not_empty(stage: str, sd: StageDir) -> None:
    if not sd.output_rows():
        reasons: dict[str, int] = {}
        for q in sd.quarantine_rows():
            reasons[q[R.REASON]] = reasons.get(q[R.REASON], 0) + 1
        raise PipelineError(
            f"stage '{stage}' produced no output rows ({sum(reasons.values())} quarantined: {reasons}); "
            f"see {sd.quarantine_dir} for details"
        )


def run_row_stage(name: str, fn: RowFn, rows: list[dict[str, Any]], cfg: Config, sd: StageDir, h: str) -> None:
    """Process only rows without output/quarantine yet, one chunk (= one atomic part) at a time."""
    done = sd.done_ids()
    todo = [r for r in rows if str(r[R.PROBLEM_ID]) not in done]
    log.info("stage %s: %d rows in, %d already done, %d to process", name, len(rows), len(rows) - len(todo), len(todo))
    step = cfg.run.chunk_size or len(todo) or 1
    t0 = time.perf_counter()
    # Problems done across chunks (Ray Data draws its own per-batch bars inside each chunk); off when
    # stderr is not a terminal (job logs), where the per-chunk log lines below say the same.
    bar = _progress(name, len(rows), len(rows) - len(todo))
    for i in range(0, len(todo), step):
        chunk = todo[i : i + step]
        out, quar, summary = fn(chunk, cfg)
        ids_in = {str(r[R.PROBLEM_ID]) for r in chunk}
        ids_out = {str(r[R.PROBLEM_ID]) for r in out} | {str(q[R.PROBLEM_ID]) for q in quar}
        missing = ids_in - ids_out
        if missing:  # nothing may vanish silently: account for it as quarantine
            quar += [{R.STAGE: name, R.PROBLEM_ID: pid, R.REASON: "lost_in_stage", R.DETAIL: "no output row came back"} for pid in sorted(missing)]
        sd.write_part(out, quar)
        write_json(sd.root / "summaries" / f"chunk-{i // step:05d}-{int(time.time())}.json", summary)
        log.info("stage %s: chunk %d: %d out, %d quarantined", name, i // step, len(out), len(quar))
        bar.update(len(chunk))
    bar.close()
    summaries = [json.loads(p.read_text()) for p in sorted((sd.root / "summaries").glob("*.json"))]
    _check_not_empty(name, sd)
    sd.write_manifest(config_hash=h, num_input=len(rows), wall_s=time.perf_counter() - t0, summaries=summaries)


def _progress(stage: str, total: int, done: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc=f"stage {stage}", unit="problem", disable=None, mininterval=1.0)


def run_pipeline(cfg: Config, stages: list[str] | None = None) -> dict[str, Any]:
    """Run (or resume) the configured stages; returns {stage: manifest}."""
    cfg = effective_config(cfg)
    plan = stages_for(cfg)
    unknown = sorted(set(stages or []) - set(STAGE_NAMES))
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages are {list(STAGE_NAMES)}")
    hashes = stage_hashes(cfg, plan)
    run_dir = Path(cfg.run.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", to_dict(cfg))
    manifests: dict[str, Any] = {}
    for spec in plan:
        sd = StageDir(run_dir / spec.name)
        if stages and spec.name not in stages:
            continue
        if sd.is_done(hashes[spec.name]):
            log.info("stage %s: done (manifest present), skipping", spec.name)
        else:
            _run_stage(spec, cfg, sd, hashes[spec.name], run_dir)
        manifests[spec.name] = json.loads(sd.manifest_path.read_text())
    if not stages or "eval" in stages:
        from palign_ray.report import write_run_report

        write_run_report(run_dir, cfg, [s.name for s in plan])
    return manifests


def _input_rows(run_dir: Path, stage: str | None) -> list[dict[str, Any]]:
    assert stage is not None
    sd = StageDir(run_dir / stage)
    if not sd.is_done():
        raise PipelineError(f"stage needs the output of '{stage}', which has not finished; run it first (drop --stages)")
    return sd.output_rows()


ENGINE_STAGES = ("teacher", "truncate", "align", "eval")  # stages that start vLLM actor pools


def _run_stage(spec: StageSpec, cfg: Config, sd: StageDir, h: str, run_dir: Path) -> None:
    from palign_ray.ray_env import free_resources, init_ray

    t0 = time.perf_counter()
    _prepare(sd, h)
    log.info("stage %s: start", spec.name)
    if spec.name in ENGINE_STAGES:
        init_ray(cfg.ray)  # before the stage, so the resources it frees again can be checked after it
    before = free_resources()
    try:
        _stage_body(spec, cfg, sd, h, run_dir, t0)
    finally:
        if spec.name in ENGINE_STAGES:
            _release(spec.name, before)
    log.info("stage %s: finished in %.1f s", spec.name, time.perf_counter() - t0)


def _release(stage: str, before: dict[str, float]) -> None:
    """Hand the hardware on: wait until the stage's vLLM actors have exited (GPUs free for the next stage)."""
    from palign_ray.ray_env import wait_for_release

    waited = wait_for_release(before)
    log.info("stage %s: engines released (waited %.1f s for %s)", stage, waited, before)


def _stage_body(spec: StageSpec, cfg: Config, sd: StageDir, h: str, run_dir: Path, t0: float) -> None:
    if spec.name == "problems":
        rows, quar = problems_stage(cfg)
        sd.reset()
        _prepare(sd, h)
        sd.write_part(rows, quar)
        _check_not_empty(spec.name, sd)
        sd.write_manifest(config_hash=h, num_input=len(rows) + len(quar), wall_s=time.perf_counter() - t0)
    elif spec.name in ("teacher", "truncate", "align"):
        fn = {"teacher": teacher_stage, "truncate": truncate_stage, "align": align_stage}[spec.name]
        run_row_stage(spec.name, fn, _input_rows(run_dir, spec.input_stage), cfg, sd, h)
    elif spec.name == "sft_data":
        rows = _input_rows(run_dir, spec.input_stage)
        summary = sft_data_stage(rows, cfg, sd.root / "shards")
        if not summary.get("num_out"):
            raise PipelineError(f"stage 'sft_data' produced no examples ({summary.get('reasons')}); see {sd.quarantine_dir}")
        sd.write_manifest(config_hash=h, wall_s=time.perf_counter() - t0, num_input=len(rows),
                          num_output=summary["num_out"], summary=summary)
    elif spec.name == "train":
        data_dir = run_dir / "sft_data" / "shards"
        resume = train_started(sd.root / "model")
        metrics = train_stage(cfg, data_dir, sd.root / "model", resume=resume)
        sd.write_manifest(config_hash=h, wall_s=time.perf_counter() - t0, metrics=metrics)
    elif spec.name == "eval":
        base = _eval_once(cfg, sd.root / "base", cfg.sft.model)
        trained_model = run_dir / "train" / "model"
        trained = _eval_once(cfg, sd.root / "trained", str(trained_model)) if trained_model.is_dir() else None
        sd.write_manifest(config_hash=h, wall_s=time.perf_counter() - t0, base=_headline(base),
                          trained=_headline(trained) if trained else None)


def _eval_once(cfg: Config, out_dir: Path, model: str) -> dict[str, Any]:
    """Evaluate `model` unless an earlier, interrupted attempt of this stage already finished it.

    The stage directory only holds results of the current config (`_prepare` clears it otherwise), and
    `.done` is written after every file of the evaluation, so a kill mid-way recomputes only this model.
    """
    done = out_dir / ".done"
    if done.is_file() and (out_dir / "metrics.json").is_file():
        log.info("stage eval: %s already evaluated in %s, reusing", model, out_dir)
        return json.loads((out_dir / "metrics.json").read_text())
    metrics = eval_stage(cfg, out_dir, model)
    done.write_text(model)
    return metrics


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in ("model", "average", "benchmarks") if k in metrics}


def run_main(argv: list[str]) -> int:
    """`palign run CONFIG [--stages a,b] [key=value ...]`"""
    import argparse

    from palign_ray.cli import parse_config
    from palign_ray.config import help_lines

    p = argparse.ArgumentParser(prog="palign run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="config keys (override with key=value):\n" + "\n".join(help_lines()))
    p.add_argument("config", nargs="?", default=None, help="YAML run config (e.g. jobs/configs/default.yaml)")
    p.add_argument("--stages", default="", help=f"comma-separated subset of {','.join(STAGE_NAMES)}")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = p.parse_intermixed_args(argv)
    if args.config and "=" in args.config:  # `palign run key=value` without a file
        args.overrides.insert(0, args.config)
        args.config = None
    argv2 = (["--config", args.config] if args.config else []) + args.overrides
    _, cfg = parse_config(_plain_config_parser(), argv2)
    stages = [s for s in args.stages.split(",") if s] or None
    try:
        manifests = run_pipeline(cfg, stages)
    except PipelineError as e:
        log.error("%s", e)
        return 3
    print(json.dumps({k: {kk: v.get(kk) for kk in ("num_output", "num_quarantined", "wall_s") if kk in v} for k, v in manifests.items()}, indent=1))
    report = Path(cfg.run.run_dir) / "report.md"
    if report.is_file():
        print(f"report: {report}")
    return 0


def _plain_config_parser() -> Any:
    from palign_ray.cli import config_parser

    return config_parser("run", "palign run")
