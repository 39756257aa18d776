"""The evaluation as a streaming row stage: benchmark problems in parts through an actor pool that generates,
grades and commits per-sample rows on the workers; the driver scores from the committed parts.

An evaluation directory (`palign eval --output D`, `<run>/base_eval/base`, `<run>/eval/trained`) holds

    D/eval.json    what the evaluation is of (model, eval and engine settings, seed)
    D/problems/    the loaded benchmark problems: one committed part, load failures in its quarantine
    D/samples/     committed parts of per-sample rows (generation + grade); failed problems in quarantine
    D/metrics.json, report.md, samples.jsonl, quarantine.jsonl, *.png   written last, by the driver

A killed evaluation resumes: a rerun with the same settings generates only the problems without a
committed part; other settings start it afresh. The driver reads no generation text except to stream
samples.jsonl one part at a time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from palign_ray import records as R
from palign_ray.artifacts import StageDir, retention, uniform_rows, write_json
from palign_ray.benchmarks import BENCHMARK, load_benchmark
from palign_ray.config import Config, stage_engine, to_dict
from palign_ray.eval.report import write_report
from palign_ray.eval.score import (
    EXTRACTED,
    GENERATION,
    GOLD,
    LABEL,
    STAGE,
    build_prompt,
    compute_metrics,
    grade_samples,
    reason_counts,
)
from palign_ray.streaming import StreamJob, merge_summaries, part_rows, run_stream

log = logging.getLogger(__name__)

IDENTITY = "eval.json"
PROBLEMS = "problems"
SAMPLES = "samples"


class EvalError(RuntimeError):
    """Problems are left without committed samples after every pass: a rerun resumes them."""


class EvalWorker:
    """Inside an actor: one Generator (its engine started once), a part of problems → graded sample rows."""

    def __init__(self, cfg: Config, model: str, on_engine_start: Any = None):
        from palign_ray.engines.base import SamplingSpec
        from palign_ray.generation import Generator

        e = cfg.eval
        sampling = SamplingSpec(
            max_tokens=e.max_tokens,
            temperature=e.temperature,
            top_p=e.top_p,
            repetition_penalty=e.repetition_penalty,
            n=e.num_samples,
        )
        engine, _ = stage_engine(cfg, STAGE)
        self.cfg = cfg
        # salt "eval": the per-problem seeds of every evaluation of this run seed, whatever the part sizes
        self.gen = Generator(model, engine, sampling, "", cfg.run.seed, STAGE, on_engine_start)

    async def process(
        self, rows: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
        from palign_ray.generation import timed_generate

        start = time.perf_counter()
        gen_rows, stats = await timed_generate(
            self.gen,
            [
                {R.PROBLEM_ID: str(p[R.PROBLEM_ID]), R.PROMPT: build_prompt(p[R.QUESTION])}
                for p in rows
            ],
        )
        # math-verify runs in child processes: off the event loop, so other parts keep the engine busy
        samples, failed = await asyncio.to_thread(grade_samples, rows, gen_rows, self.cfg.eval)
        stats["wall_s"] = round(time.perf_counter() - start, 2)
        return samples, failed, retention(STAGE, len(rows), samples, failed, len(rows), **stats)

    def close(self) -> None:
        self.gen.close()


def eval_job(cfg: Config, model: str, num_rows: int = 0) -> StreamJob:
    """The evaluation of `model` as a streaming job (one EvalWorker per actor)."""
    engine, ray_cfg = stage_engine(cfg, STAGE)
    return StreamJob(
        STAGE,
        EvalWorker,
        {"cfg": cfg, "model": model},
        ray_cfg,
        part_rows(cfg.run.chunk_size, ray_cfg, num_rows),
        cpu_threads=engine.cpu_threads,
    )


def identity(cfg: Config, model: str) -> dict[str, Any]:
    """What makes two evaluations the same: committed samples are reused only under an equal identity."""
    engine, _ = stage_engine(cfg, STAGE)
    return {
        "model": model,
        "eval": to_dict(cfg.eval),
        "engine": to_dict(engine),
        "seed": cfg.run.seed,
    }


def claim(out: Path, ident: dict[str, Any]) -> None:
    """Make `out` an evaluation of `ident`: keep its committed parts if they are, else clear them."""
    path = out / IDENTITY
    ident = json.loads(json.dumps(ident, default=str))  # as read back (tuples are lists)
    if path.is_file() and json.loads(path.read_text()) == ident:
        return
    if path.is_file():
        log.warning("eval: %s holds an evaluation with other settings; starting afresh", out)
    for name in (PROBLEMS, SAMPLES):
        StageDir(out / name).reset()
    write_json(path, ident)


def load_problems(cfg: Config, sd: StageDir) -> None:
    """Every benchmark's problems as one committed part (load failures in its quarantine), once.

    Read and written by a worker beside the driver: the driver never holds the problems' text (loading
    20k problems of 2 KB in the driver grew it by ~95 MB, bench/results/2026-12-06-driver-rss.md).
    """
    from palign_ray.ray_env import beside_driver

    if not sd.commits():
        beside_driver(cfg.ray, write_problems, cfg, str(sd.root))


def write_problems(cfg: Config, root: str) -> None:
    """Load every benchmark of cfg.eval and commit them as one part of the problems stage dir `root`."""
    sd = StageDir(root)
    e = cfg.eval
    problems: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    for name in e.benchmarks:
        got, rejected = load_benchmark(
            name, e.data_dir, e.num_problems, e.builtin_seed, builtin_split=e.builtin_split
        )
        problems += got
        bad += rejected
    sd.write_part(uniform_rows(problems), uniform_rows(bad))


def evaluate(cfg: Config, out_dir: str | Path, model: str | None = None) -> dict[str, Any]:
    """Evaluate `model` (default cfg.eval.model) on cfg.eval.benchmarks, resuming a killed run; returns metrics."""
    import pyarrow.parquet as pq

    model = model or cfg.eval.model
    out = Path(out_dir)
    t0 = time.monotonic()
    ident = identity(cfg, model)
    claim(out, ident)
    problems, samples = StageDir(out / PROBLEMS), StageDir(out / SAMPLES)
    load_problems(cfg, problems)
    files = problems.output_files()
    num = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    res = run_stream(eval_job(cfg, model, num), files, samples) if files else None
    if res is not None and res.retry_failed:
        raise EvalError(
            f"eval of {model}: {len(res.retry_failed)} problems have no committed samples after "
            f"{res.passes} passes ({res.retry_failed[0].get('detail', '')[:300]}); rerun the same "
            "command to evaluate only them"
        )
    light = _light_rows(samples.output_files())
    failed = _with_benchmark(samples.quarantine_rows(), files)
    quarantined = problems.quarantine_rows() + failed
    metrics = compute_metrics(light, cfg.eval, cfg.run.seed, failed=failed)
    commits = samples.commits()  # read once: one marker file per part
    parts = merge_summaries([c["summary"] for c in commits])
    gen_wall = _covered_s(c["summary"].get("generation_window") or [] for c in commits)
    tokens = int(parts.get("generated_tokens", 0))
    metrics.update(
        model=model,
        config={k: v for k, v in ident.items() if k != "model"},
        # wall_s: this call's; the earlier calls of a resumed evaluation are not counted
        timing={
            "wall_s": time.monotonic() - t0,
            "generation_wall_s": gen_wall,
            "generated_tokens": tokens,
            "tokens_per_s": tokens / gen_wall if gen_wall > 0 else 0.0,
        },
        stream={
            "num_parts": len(commits),
            "engine_starts": res.engine_starts if res else 0,
            "actors_used": res.actors_used if res else 0,
            "num_done_before": res.num_done_before if res else 0,
            "num_processed": res.num_processed if res else 0,
        },
        quarantine=reason_counts(quarantined),
    )
    write_report(
        out, metrics, light, quarantined, full_samples=_sample_rows(commits, samples.root, files)
    )
    samples.write_manifest(model=model, engine_starts=metrics["stream"]["engine_starts"])
    log.info(
        "eval of %s: %d problems (%d done before), %d samples, %d quarantined, %d engine starts → %s",
        model,
        num,
        metrics["stream"]["num_done_before"],
        len(light),
        len(quarantined),
        metrics["stream"]["engine_starts"],
        out,
    )
    return metrics


# Columns the driver does not read back to score (samples.jsonl keeps them): fewer keys in each of its
# per-sample dicts. With the text only left out, 20k problems grew the driver by 201 MB (goal < 200).
_HEAVY = frozenset({GENERATION, GOLD, EXTRACTED, LABEL})


def _light_rows(files: list[Path]) -> list[dict[str, Any]]:
    """Committed sample rows without their generation text and answers: what scoring and plots read."""
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    for f in files:
        cols = [c for c in pq.ParquetFile(f).schema_arrow.names if c not in _HEAVY]
        rows += pq.read_table(f, columns=cols).to_pylist()
    return rows


def _with_benchmark(
    quarantined: list[dict[str, Any]], problem_files: list[Path]
) -> list[dict[str, Any]]:
    """Failed problems' rows with their benchmark, which a row the stream itself quarantined lacks."""
    import pyarrow.parquet as pq

    if all(q.get(BENCHMARK) for q in quarantined):
        return quarantined
    bench: dict[str, str] = {}
    for f in problem_files:
        t = pq.read_table(f, columns=[R.PROBLEM_ID, BENCHMARK])
        bench.update(zip(map(str, t.column(0).to_pylist()), t.column(1).to_pylist(), strict=True))
    return [
        q if q.get(BENCHMARK) else {**q, BENCHMARK: bench.get(str(q[R.PROBLEM_ID]), "")}
        for q in quarantined
    ]


def _sample_rows(
    commits: list[dict[str, Any]], root: Path, problem_files: list[Path]
) -> Iterator[dict[str, Any]]:
    """Every committed sample row, one part in memory at a time, parts in the problems' input order.

    A part's rows are in input order already; ordering the parts by their first problem gives input
    order for a run that was never interrupted (a resumed run's parts may interleave).
    """
    import pyarrow.parquet as pq

    from palign_ray.streaming import input_ids

    position = {pid: i for i, pid in enumerate(input_ids(problem_files))}
    commits = sorted(
        (c for c in commits if any("/" not in f for f in c["files"])),
        key=lambda c: min((position.get(p, len(position)) for p in c["problem_ids"]), default=0),
    )
    for c in commits:
        for f in c["files"]:
            if "/" not in f:
                yield from pq.read_table(root / f).to_pylist()


def _covered_s(windows: Any) -> float:
    """Seconds covered by the union of [start, end] windows (parts overlap; a resume leaves a gap)."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(tuple(w) for w in windows if len(w) == 2):
        if b > end:
            total += b - max(a, end)
            end = b
    return total
