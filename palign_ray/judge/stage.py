"""The truncate stage's Ray shell: the judge worker an actor runs, its streaming job, and the in-memory entry.

Each actor owns one judge engine. A part's problems are split into batches of `ray.batch_size`; every
batch runs its binary-search rounds (`rounds.arun_rounds`: one engine submission per round), and the
batches of all parts in flight on the actor run concurrently, so while one batch waits on its last
problems, the probes of others fill the engine. All probes of a problem go to this one engine, whose
prefix cache holds the problem's prompt (see palign_ray.judge.prompts).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence
from typing import Any

from palign_ray import records as R
from palign_ray.config import Config, JudgeConfig, RayConfig, stage_engine
from palign_ray.judge.rounds import (
    STAGE,
    Problem,
    arun_rounds,
    check_input,
    check_judge_config,
    finished_rows,
    judge_tools,
    output_schema,
    prepare_rows,
    reference_config,
    summarize,
)
from palign_ray.streaming import StreamJob, part_rows, run_rows


def stage_judge_config(cfg: Config) -> JudgeConfig:
    """judge.* as the stage runs it (paper-reference mode replaces search and verdict settings)."""
    return reference_config(cfg.judge) if cfg.judge.paper_reference else cfg.judge


def stage_ray_config(cfg: Config) -> RayConfig:
    """The judge pool; paper-reference mode is the authors' serial algorithm: one actor, one problem at a time."""
    _, ray_cfg = stage_engine(cfg, "judge")
    if cfg.judge.paper_reference:
        return dataclasses.replace(ray_cfg, batch_size=1, num_actors=1, max_concurrent_batches=1)
    return ray_cfg


class JudgeWorker:
    """Inside an actor: judge a part's problems in interleaved batches on one engine (started on first use)."""

    def __init__(self, cfg: Config, on_engine_start: Any = None):
        self.cfg = cfg
        self.jcfg = stage_judge_config(cfg)
        self.engine_cfg, _ = stage_engine(cfg, "judge")
        self.ray_cfg = stage_ray_config(cfg)
        self.on_engine_start = on_engine_start
        self.engine: Any = None
        self.tools: Any = None

    def _start(self) -> None:
        from palign_ray.generation import start_engine

        if self.engine is None:
            self.engine = start_engine(self.jcfg.model, self.engine_cfg, self.on_engine_start)
            self.tools = judge_tools(self.engine.tokenizer, self.jcfg)

    async def process(
        self, rows: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
        t0 = time.perf_counter()
        items, bad = check_input(rows)
        judged = self.jcfg.search != "fixed_ratio"
        if judged and items:
            self._start()
        builder = self.tools[0] if judged and self.tools else None
        problems, quarantined = prepare_rows(
            items, builder, self.jcfg, self.engine_cfg.max_model_len
        )
        calls = await self._judge(problems) if judged and problems else 0
        out, failed = finished_rows(problems, self.jcfg, self.jcfg.model)
        bad += quarantined + failed
        out.sort(key=lambda r: r[R.PROBLEM_ID])
        wall = time.perf_counter() - t0
        summary = summarize(
            out,
            bad,
            len(rows),
            wall,
            self.jcfg,
            paper_reference=self.cfg.judge.paper_reference,
            engine_calls=calls,
            judge_s=wall if judged else 0.0,
        )
        return out, bad, summary

    async def _judge(self, problems: list[Problem]) -> int:
        """Batches of ray.batch_size problems, concurrently (paper-reference: one after another)."""
        size = max(1, self.ray_cfg.batch_size)
        batches = [problems[i : i + size] for i in range(0, len(problems), size)]

        def run(batch: list[Problem]) -> Any:
            return arun_rounds(
                self.engine,
                batch,
                self.jcfg,
                self.tools[1],
                self.engine_cfg.max_model_len,
                self.cfg.run.seed,
            )

        if self.cfg.judge.paper_reference:
            return sum([await run(b) for b in batches])
        return sum(await asyncio.gather(*(run(b) for b in batches)))

    def close(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None


def judge_job(cfg: Config, num_rows: int = 0) -> StreamJob:
    """The truncate stage as a streaming job (one JudgeWorker per actor)."""
    check_judge_config(stage_judge_config(cfg))
    ray_cfg = stage_ray_config(cfg)
    return StreamJob(
        STAGE,
        JudgeWorker,
        {"cfg": cfg},
        ray_cfg,
        part_rows(cfg.run.chunk_size, ray_cfg, num_rows),
        schema=output_schema,
    )


def truncate_rows(
    rows: Sequence[dict[str, Any]], cfg: Config
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Rows {problem_id, question, cot, answer} in memory → (output rows, quarantine rows, summary).

    Batched rounds on a Ray Data actor pool. `judge.paper_reference=true` is the authors' algorithm on the
    same engine: binary search, decode-and-parse verdicts (judge.max_new_tokens, the paper's 256), one
    actor fed one problem at a time, so one probe per engine call, no batching and no sleep; decoding
    follows judge.temperature (greedy by default, reproducible; the authors sampled with model
    defaults). `judge.search=fixed_ratio` needs no model and runs in this process.
    """
    jcfg = stage_judge_config(cfg)
    check_judge_config(jcfg)
    t0 = time.perf_counter()
    items, bad = check_input(rows)  # ids unique across all rows, not only within a part
    engine_starts = 0
    if jcfg.search == "fixed_ratio":
        out, more_bad, summary = asyncio.run(JudgeWorker(cfg).process(items))
        parts = [summary]
    else:
        out, more_bad, parts, res = run_rows(judge_job(cfg, len(items)), items)
        engine_starts = res.engine_starts
    bad += more_bad
    out.sort(key=lambda r: r[R.PROBLEM_ID])
    assert len(out) + len(bad) == len(rows), "every input row must leave as output or quarantine"
    summary = summarize(
        out,
        bad,
        len(rows),
        time.perf_counter() - t0,
        jcfg,
        paper_reference=cfg.judge.paper_reference,
        engine_calls=sum(int(p.get("engine_calls", 0)) for p in parts),
        judge_s=sum(float(p.get("judge_s", 0.0)) for p in parts),
    )
    summary["engine_starts"] = engine_starts
    return out, bad, summary
