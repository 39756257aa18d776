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
from palign_ray.admission import KVAdmission, fitting_batches, reported_kv
from palign_ray.config import Config, JudgeConfig, RayConfig, stage_engine
from palign_ray.judge.audit import audit_off_reason, audit_sample, check_audit_config
from palign_ray.judge.contract import (
    STAGE,
    check_input,
    check_judge_config,
    output_schema,
    reference_config,
)
from palign_ray.judge.measure import judge_measurement, records_of
from palign_ray.judge.probes import judge_tools
from palign_ray.judge.problem import Problem, prepare_rows
from palign_ray.judge.rollout import check_rollout_config
from palign_ray.judge.rounds import arun_rounds, resident_tokens
from palign_ray.judge.rows import finished_rows
from palign_ray.judge.summary import summarize
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

    def __init__(
        self, cfg: Config, audit_ids: frozenset[str] = frozenset(), on_engine_start: Any = None
    ):
        self.cfg = cfg
        self.audit_ids = (
            audit_ids  # the seeded audit sample (judge.audit_problems), chosen by the driver
        )
        self.jcfg = stage_judge_config(cfg)
        self.engine_cfg, _ = stage_engine(cfg, "judge")
        self.ray_cfg = stage_ray_config(cfg)
        self.on_engine_start = on_engine_start
        self.engine: Any = None
        self.tools: Any = None
        self.auditor: Any = None
        self.prober: Any = None  # verdict=rollout: the student's continuations decide
        self.admission: KVAdmission | None = None  # shared by every part in flight on this actor
        self.kv_block = 0
        self.admission_note = "no engine"

    def _start(self) -> None:
        from palign_ray.generation import start_engine

        if self.engine is None:
            self.engine = start_engine(self.jcfg.model, self.engine_cfg, self.on_engine_start)
            self.tools = judge_tools(self.engine.tokenizer, self.jcfg)
            self.admission, self.kv_block, self.admission_note = kv_admission(
                self.engine, self.jcfg.kv_admission
            )
            if self.jcfg.verdict == "rollout":
                from palign_ray.judge.rollout import RolloutProber

                self.prober = RolloutProber(self.cfg, self.engine.tokenizer)

    async def process(
        self, rows: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
        t0 = time.perf_counter()
        items, bad = check_input(rows, self.jcfg.known_cut_field)
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
        audit_s = await self._audit(out, problems) if judged else 0.0
        wall = time.perf_counter() - t0
        summary = summarize(
            out,
            bad,
            len(rows),
            wall,
            self.jcfg,
            paper_reference=self.cfg.judge.paper_reference,
            engine_calls=calls,
            judge_s=wall - audit_s if judged else 0.0,
        )
        summary.update(audit_tokens(out), audit_s=round(audit_s, 3))
        if judged:
            summary["kv_admission"] = self.admission_note
        return out, bad, summary

    async def _audit(self, out: list[dict[str, Any]], problems: list[Problem]) -> float:
        """Roll the student out for this part's sampled problems (those with a gold answer); returns seconds."""
        picked = [r for r in out if r[R.PROBLEM_ID] in self.audit_ids and str(r[R.ANSWER]).strip()]
        if not picked:
            return 0.0
        from palign_ray.judge.audit import Auditor

        t0 = time.perf_counter()
        self._start()
        if self.auditor is None:
            self.auditor = Auditor(self.cfg, self.engine, self.engine_cfg)
        await self.auditor.audit(picked, {p.problem_id: p.ends for p in problems})
        return time.perf_counter() - t0

    async def _judge(self, problems: list[Problem]) -> int:
        """Batches of ray.batch_size problems, concurrently (paper-reference: one after another)."""
        size = max(1, self.ray_cfg.batch_size)

        def run(batch: list[Problem], on_done: Any = None) -> Any:
            return arun_rounds(
                self.engine,
                batch,
                self.jcfg,
                self.tools[1],
                self.engine_cfg.max_model_len,
                self.cfg.run.seed,
                self.prober,
                on_done,
            )

        admission = self.admission
        if self.cfg.judge.paper_reference or admission is None:
            batches = [problems[i : i + size] for i in range(0, len(problems), size)]
            if self.cfg.judge.paper_reference:
                return sum([await run(b) for b in batches])
            return sum(await asyncio.gather(*(run(b) for b in batches)))
        footprint = [resident_tokens(p, self.jcfg, self.kv_block) for p in problems]

        async def admitted(idx: list[int]) -> int:
            held = {id(problems[i]): footprint[i] for i in idx}
            await admission.acquire(sum(held.values()))
            return await run(
                [problems[i] for i in idx], lambda p: admission.release(held.pop(id(p), 0))
            )

        fitted = fitting_batches(footprint, admission.capacity, size)
        return sum(await asyncio.gather(*(admitted(b) for b in fitted)))

    def close(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None


def kv_admission(engine: Any, share: float) -> tuple[KVAdmission | None, int, str]:
    """(admission over `share` of the engine's KV cache, block size, a note for the summary)."""
    reported = reported_kv(engine)
    if share <= 0:
        return None, 0, "off (judge.kv_admission=0)"
    if reported is None:
        return None, 0, "off (the engine reports no KV capacity)"
    tokens, block = reported
    budget = int(tokens * share)
    return KVAdmission(budget), block, f"{budget} of {tokens} KV tokens (share {share})"


def audit_tokens(out: Sequence[dict[str, Any]]) -> dict[str, int]:
    """The audit's token cost in a part, kept apart from the judge's own."""
    audits = [r["audit"] for r in out if r.get("audit")]
    return {
        "audit_problems": len(audits),
        "audit_prompt_tokens": sum(int(a["prompt_tokens"]) for a in audits),
        "audit_generated_tokens": sum(int(a["generated_tokens"]) for a in audits),
    }


def audit_ids_of(cfg: Config, ids: Sequence[str]) -> frozenset[str]:
    """The seeded audit sample of the stage's input ids (none when `audit_off_reason` says why)."""
    if audit_off_reason(cfg):
        return frozenset()
    return audit_sample(ids, cfg.judge.audit_problems, cfg.run.seed)


def judge_job(cfg: Config, num_rows: int = 0, ids: Sequence[str] = ()) -> StreamJob:
    """The truncate stage as a streaming job (one JudgeWorker per actor); `ids`: the input ids to sample audits from."""
    check_judge_config(stage_judge_config(cfg))
    check_audit_config(cfg)
    check_rollout_config(cfg)
    ray_cfg = stage_ray_config(cfg)
    return StreamJob(
        STAGE,
        JudgeWorker,
        {"cfg": cfg, "audit_ids": audit_ids_of(cfg, ids)},
        ray_cfg,
        part_rows(cfg.run.chunk_size, ray_cfg, num_rows),
        schema=output_schema,
        cpu_threads=stage_engine(cfg, "judge")[0].cpu_threads,
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
    # ids unique across all rows, not only within a part
    items, bad = check_input(rows, jcfg.known_cut_field)
    engine_starts = 0
    if jcfg.search == "fixed_ratio":
        out, more_bad, summary = asyncio.run(JudgeWorker(cfg).process(items))
        parts = [summary]
    else:
        ids = [str(r[R.PROBLEM_ID]) for r in items]
        out, more_bad, parts, res = run_rows(judge_job(cfg, len(items), ids), items)
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
    notes = sorted({str(p["kv_admission"]) for p in parts if p.get("kv_admission")})
    if notes:  # what admission each actor ran with (off, or its budget)
        summary["kv_admission"] = "; ".join(notes)
    summary.update(audit_tokens(out))
    summary["judge_audit"] = judge_measurement(
        records_of(out),
        judged=jcfg.search != "fixed_ratio",
        fixed_ratio=jcfg.fixed_ratio,
        seed=cfg.run.seed,
        audit_note=audit_off_reason(cfg),
    )
    return out, bad, summary
