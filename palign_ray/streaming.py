"""A row stage as one streaming Ray Data job: parts read and written on the workers, engines live for the stage.

The driver plans and counts: it reads only the `problem_id` column of the input and of committed
output parts (for resume), starts one Ray Data job, and writes the manifest. Workers read the input
parts (`read_parquet`), drop the ids that are already done, and run `map_batches` into an actor pool
whose UDF builds its stage worker (and so its engine) once per actor. Each UDF call processes one
part's rows and writes the part itself (atomic files + commit marker, see `artifacts.StageDir`), so
rows never travel back to the driver. Several parts are in flight per actor (an async UDF), and their
engine requests share one running batch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from palign_ray import records as R
from palign_ray.artifacts import StageDir, quarantine_row, uniform_rows, write_json
from palign_ray.config import RayConfig

log = logging.getLogger(__name__)

# Quarantine reasons that mean "try again", not "this row is bad": such rows are never committed, so a
# rerun (or the stage's next pass) processes the problem again.
RETRYABLE_REASONS = frozenset({"judge_engine_error", "api_unavailable"})
LOST = "lost_in_stage"  # an input row the worker returned nothing for
ENGINES = "engines"  # <stage>/engines/<attempt>-<id>.json: one file per engine start


class RowWorker(Protocol):
    """What a stage runs inside an actor: rows of one part in, (output, quarantine, summary) out."""

    async def process(
        self, rows: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]: ...

    def close(self) -> None: ...


# A worker factory: called once per actor with on_engine_start (call it with engine facts each time an engine starts).
WorkerFactory = Callable[..., RowWorker]


@dataclass(frozen=True)
class StreamJob:
    """One row stage's streaming job."""

    stage: str
    make_worker: WorkerFactory  # module-level callable (pickled to the actors)
    worker_kwargs: dict[str, Any]
    ray_cfg: RayConfig
    part_rows: int  # rows per part: the resume granularity (not the engine lifetime)
    schema: Callable[[], Any] | None = None  # Arrow schema of the output parts (None: inferred)
    cpu_threads: int | None = None  # the engine's threads on CPU (EngineConfig.cpu_threads)
    # Each input file is one part, read whole by the worker: a problem's several rows (align's samples)
    # stay in one part, so "done" by problem_id is exact on resume. `part_rows` is then unused.
    whole_files: bool = False


@dataclass
class StreamResult:
    num_input: int = 0
    num_done_before: int = 0
    num_processed: int = 0
    num_parts: int = 0
    passes: int = 0
    engine_starts: int = 0
    actors_used: int = 0  # distinct actors that committed parts in this run
    retry_failed: list[dict[str, Any]] = field(
        default_factory=list
    )  # retryable rows still failing after every pass
    wall_s: float = 0.0


class PartUDF:
    """Async actor UDF: builds the stage worker once, then one part per call, written from this actor."""

    def __init__(self, job: StreamJob, stage_dir: str, attempt: str):
        self.job = job
        self.sd = StageDir(stage_dir)
        self.attempt = attempt
        self.worker = job.make_worker(**job.worker_kwargs, on_engine_start=self._engine_started)
        self.schema = job.schema() if job.schema else None
        self.actor = f"{os.uname().nodename}:{os.getpid()}"

    def _engine_started(self, info: dict[str, Any]) -> None:
        """One file per engine start: the stage counts them (engine_starts) without asking the actors."""
        write_json(
            self.sd.root / ENGINES / f"{self.attempt}-{uuid.uuid4().hex[:8]}.json",
            {"attempt": self.attempt, "pid": os.getpid(), "time": time.time(), **info},
        )

    async def __call__(self, batch: Any) -> dict[str, list[Any]]:
        rows = (
            await asyncio.to_thread(read_file_item, batch)
            if self.job.whole_files
            else batch.to_pylist()
        )
        out, quar, summary = await self.worker.process(rows)
        retry = [q for q in quar if q[R.REASON] in RETRYABLE_REASONS]
        quar = [q for q in quar if q[R.REASON] not in RETRYABLE_REASONS]
        quar += lost_rows(self.job.stage, rows, out, quar, retry)
        part = await asyncio.to_thread(
            self.sd.write_part,
            out,
            quar,
            summary=summary,
            num_input=len(rows) - len(retry),
            schema=self.schema,
        )
        return {
            "part": [part],
            "num_input": [len(rows)],
            "num_output": [len(out)],
            "num_quarantined": [len(quar)],
            "retry": [json.dumps(retry, default=str)],
            "actor": [self.actor],
        }

    def __del__(
        self,
    ) -> None:  # Ray Data deletes the UDF when the actor exits gracefully: free the engine
        worker = getattr(self, "worker", None)
        if worker is not None:
            worker.close()


def lost_rows(
    stage: str,
    rows: list[dict[str, Any]],
    out: list[dict[str, Any]],
    quar: list[dict[str, Any]],
    retry: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Nothing may vanish silently: input ids with no output, quarantine or retry row become quarantine."""
    seen = {str(r[R.PROBLEM_ID]) for r in (*out, *quar, *retry)}
    missing = sorted({str(r[R.PROBLEM_ID]) for r in rows} - seen)
    return [quarantine_row(stage, pid, LOST, "no output row came back") for pid in missing]


def input_ids(files: Sequence[Path]) -> list[str]:
    """problem_ids of the input parts, in order (only that column is read)."""
    import pyarrow.parquet as pq

    ids: list[str] = []
    for f in files:
        ids += [str(x) for x in pq.read_table(f, columns=[R.PROBLEM_ID]).column(0).to_pylist()]
    return ids


def file_items(files: Sequence[Path], done: set[str]) -> list[dict[str, Any]]:
    """whole_files mode: the input files with a problem not done yet, each with its done ids (only the
    id column is read)."""
    import pyarrow.parquet as pq

    items = []
    for f in files:
        ids = {str(x) for x in pq.read_table(f, columns=[R.PROBLEM_ID]).column(0).to_pylist()}
        if ids - done:
            items.append({"file": str(f), "done": sorted(ids & done)})
    return items


def read_file_item(batch: Any) -> list[dict[str, Any]]:
    """On the worker, whole_files mode: one item of `file_items` → the file's rows not done yet."""
    import pyarrow.parquet as pq

    (item,) = batch.to_pylist()
    return _drop_done(pq.read_table(item["file"]), item["done"] or []).to_pylist()


def _drop_done(batch: Any, done: list[str]) -> Any:
    """Resume filter on the workers: rows whose problem_id already has a committed output or quarantine row."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not done:
        return batch
    ids = pc.cast(batch[R.PROBLEM_ID], pa.string())
    return batch.filter(pc.invert(pc.is_in(ids, value_set=pa.array(done, pa.string()))))


def run_stream(
    job: StreamJob,
    input_files: Sequence[Path],
    sd: StageDir,
    *,
    max_passes: int = 3,
    progress: Callable[[int, int], Any] | None = None,
) -> StreamResult:
    """Process every input id that has no committed row yet, in up to `max_passes` passes.

    A pass after the first redoes retryable failures (e.g. judge engine errors) and the problems of
    parts dropped as duplicates (see StageDir.drop_duplicate_parts).
    """
    t0 = time.perf_counter()
    attempt = f"{int(time.time())}-{uuid.uuid4().hex[:6]}"
    removed = sd.remove_uncommitted()
    if removed:
        log.info(
            "stage %s: removed %d uncommitted part files of an interrupted run", job.stage, removed
        )
    ids = input_ids(input_files)
    res = StreamResult(num_input=len(ids))
    retry: list[dict[str, Any]] = []
    while res.passes < max_passes:
        done = sd.done_ids()
        todo = [i for i in ids if i not in done]
        if res.passes == 0:
            res.num_done_before = len(ids) - len(todo)
            log.info(
                "stage %s: %d rows in, %d already done, %d to process",
                job.stage,
                len(ids),
                res.num_done_before,
                len(todo),
            )
        if not todo:
            retry = []
            break
        if res.passes:
            log.warning(
                "stage %s: pass %d for %d problems (engine errors or parts dropped as duplicates)",
                job.stage,
                res.passes + 1,
                len(todo),
            )
        retry = _one_pass(job, input_files, sd, attempt, sorted(done), res, progress, len(ids))
        res.passes += 1
        dropped = sd.drop_duplicate_parts()
        if dropped:
            log.warning(
                "stage %s: %d parts committed problems a retried task had committed before; dropped: %s",
                job.stage,
                len(dropped),
                dropped,
            )
        elif not retry:
            break
    done = sd.done_ids()
    unfinished = {str(q[R.PROBLEM_ID]) for q in retry}
    retry += [
        quarantine_row(job.stage, i, "not_processed", f"no committed row after {res.passes} passes")
        for i in dict.fromkeys(ids)
        if i not in done and i not in unfinished
    ]
    res.retry_failed = retry
    res.engine_starts = (
        sum(1 for p in (sd.root / ENGINES).glob(f"{attempt}-*.json"))
        if (sd.root / ENGINES).is_dir()
        else 0
    )
    res.wall_s = time.perf_counter() - t0
    return res


def _one_pass(
    job: StreamJob,
    input_files: Sequence[Path],
    sd: StageDir,
    attempt: str,
    done: list[str],
    res: StreamResult,
    progress: Callable[[int, int], Any] | None,
    total: int,
) -> list[dict[str, Any]]:
    """One Ray Data job over the not-yet-done rows; returns the retryable rows that came back."""
    from palign_ray.ray_env import init_ray

    ray = init_ray(job.ray_cfg)
    bar = progress(total, len(done)) if progress else None
    retry: list[dict[str, Any]] = []
    actors: set[str] = set()
    for r in _dataset(ray, job, input_files, sd, attempt, done).iter_rows():
        actors.add(r["actor"])
        res.actors_used = max(res.actors_used, len(actors))
        res.num_parts += 1
        res.num_processed += int(r["num_input"])
        retry += json.loads(r["retry"])
        if bar is not None:
            bar.update(int(r["num_input"]))
        log.debug(
            "stage %s: part %s: %d out, %d quarantined",
            job.stage,
            r["part"],
            r["num_output"],
            r["num_quarantined"],
        )
    if bar is not None:
        bar.close()
    return retry


def _dataset(
    ray: Any,
    job: StreamJob,
    input_files: Sequence[Path],
    sd: StageDir,
    attempt: str,
    done: list[str],
) -> Any:
    from palign_ray.ray_env import actor_resources, without_stall_guard

    c = max(1, job.ray_cfg.max_concurrent_batches)
    if job.whole_files:
        ds = ray.data.from_items(file_items(input_files, set(done)))
    else:
        ds = _row_parts(ray, job, input_files, done)
    parts = ds.map_batches(
        PartUDF,
        fn_constructor_kwargs={"job": job, "stage_dir": str(sd.root), "attempt": attempt},
        batch_size=1 if job.whole_files else job.part_rows,
        batch_format="pyarrow",
        # Parts in flight per actor: an async UDF lets their engine requests share one running batch.
        compute=ray.data.ActorPoolStrategy(
            size=job.ray_cfg.num_actors,
            max_concurrent_calls_per_actor=c,
            max_tasks_in_flight_per_actor=c,
        ),
        **actor_resources(job.ray_cfg, job.cpu_threads),
    )
    return without_stall_guard(parts, job.ray_cfg)


def _row_parts(ray: Any, job: StreamJob, input_files: Sequence[Path], done: list[str]) -> Any:
    """The not-done input rows, read on the workers, in blocks of `job.part_rows`."""
    ds = ray.data.read_parquet([str(f) for f in input_files])
    if done:
        ds = ds.map_batches(
            _drop_done, fn_kwargs={"done": done}, batch_format="pyarrow", batch_size=None
        )
    # One block per part: an actor pool task takes whole blocks, so a single input file read as one
    # block would run every part on one actor while the others idle. Streaming, no shuffle.
    return ds.repartition(target_num_rows_per_block=job.part_rows, strict=True)


def part_rows(chunk_size: int, ray_cfg: RayConfig, num_rows: int = 0) -> int:
    """Rows per part: run.chunk_size, or (0) enough for one part per actor of `num_rows`."""
    if chunk_size > 0:
        return chunk_size
    return (
        max(1, math.ceil(num_rows / max(1, ray_cfg.num_actors))) if num_rows else ray_cfg.batch_size
    )


# --------------------------------------------------------------------------------------------
# In-memory rows (CLI commands, tests): the same streaming job through a scratch stage directory.


def run_rows(
    job: StreamJob, rows: list[dict[str, Any]], scratch: Path | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], StreamResult]:
    """Rows → (output rows, quarantine rows, per-part summaries, result), through `run_stream`.

    For inputs that fit the driver (a CLI file). Retryable rows that still fail come back as quarantine.
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix="palign-", dir=scratch) as tmp:
        src, dst = StageDir(Path(tmp) / "input"), StageDir(Path(tmp) / job.stage)
        if not rows:
            return [], [], [], StreamResult()
        src.write_part(uniform_rows(rows), [])
        res = run_stream(job, src.output_files(), dst)
        out, quar = dst.output_rows(), dst.quarantine_rows() + res.retry_failed
        summaries = [c["summary"] for c in dst.commits()]
    return out, quar, summaries, res


# Keys of artifacts.retention(): recomputed over all rows, never summed over parts.
RETENTION_KEYS = frozenset(
    {"stage", "num_in", "num_out", "num_problems_out", "num_quarantined", "reasons", "retention"}
)


def merge_summaries(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Numbers summed, dicts merged key by key, anything else taken from the first part that has it."""
    out: dict[str, Any] = {}
    for s in parts:
        for k, v in s.items():
            if k not in out:
                out[k] = v
            elif isinstance(v, bool) or not isinstance(v, (int, float, dict)):
                continue
            elif isinstance(v, dict) and isinstance(out[k], dict):
                out[k] = merge_summaries([out[k], v])
            elif isinstance(v, (int, float)) and isinstance(out[k], (int, float)):
                out[k] = out[k] + v
    return out
