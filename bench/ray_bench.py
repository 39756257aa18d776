"""Ray overhead: generation through Ray Data (generate_batches) vs a bare VLLMEngine on the same prompts."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from palign_ray.config import Config

log = logging.getLogger(__name__)


def generation_items(traces: list[dict[str, Any]], num: int) -> list[dict[str, str]]:
    """Teacher-style prompts (instruction + question) of distinct problems, as generate_batches items."""
    from palign_ray.teacher import teacher_prompt

    seen: dict[str, str] = {}
    for t in traces:
        key = t["problem_id"].rsplit("-", 1)[0]
        seen.setdefault(key, teacher_prompt(t["question"]))
    return [{"problem_id": k, "prompt": p} for k, p in list(seen.items())[:num]]


def throughput(tokens: int, seconds: float) -> float | None:
    return round(tokens / seconds, 2) if seconds > 0 else None


def run_bare(
    items: list[dict[str, str]], cfg: Config, max_tokens: int, repeats: int
) -> dict[str, Any]:
    """One in-process engine; the same token-id prompts and sampling as GenerateUDF (greedy, so outputs match)."""
    from bench.common import load_avg, median
    from palign_ray.chat import chat_ids, user_turn
    from palign_ray.engines.base import SamplingSpec
    from palign_ray.engines.vllm_engine import VLLMEngine
    from palign_ray.models import resolve_model

    load_before = load_avg()
    t0 = time.perf_counter()
    engine = VLLMEngine(resolve_model(cfg.teacher.model), cfg.engine)
    start_s = time.perf_counter() - t0
    try:
        ids = [chat_ids(engine.tokenizer, user_turn(i["prompt"])) for i in items]
        spec = SamplingSpec(max_tokens=max_tokens, temperature=0.0)
        secs, toks = [], 0
        for _ in range(repeats):
            engine.reset_prefix_cache()
            t0 = time.perf_counter()
            res = engine.generate(ids, spec)
            secs.append(time.perf_counter() - t0)
            toks = sum(r.num_generated_tokens for r in res)
    finally:
        engine.shutdown()
    gen = median(secs) or 0.0
    return {
        "engine_start_s": round(start_s, 2),
        "generate_s": [round(s, 2) for s in secs],
        "median_generate_s": round(gen, 3),
        "generated_tokens": toks,
        "prompt_tokens": sum(len(x) for x in ids),
        "tokens_per_s_generate": throughput(toks, gen),
        "tokens_per_s_end_to_end": throughput(toks, gen + start_s),
        "load_avg_before": load_before,
        "load_avg_after": load_avg(),
    }


def run_ray(
    items: list[dict[str, str]], cfg: Config, max_tokens: int, num_actors: int
) -> dict[str, Any]:
    """generate_batches end to end (actor start + engine load + generation + collection); Ray already up."""
    from bench.common import load_avg
    from palign_ray.engines.base import SamplingSpec
    from palign_ray.generation import generate_batches

    ray_cfg = dataclasses.replace(
        cfg.ray, num_actors=num_actors, batch_size=max(1, -(-len(items) // num_actors))
    )
    load_before = load_avg()
    t0 = time.perf_counter()
    rows = [
        r
        for batch in generate_batches(
            items,
            model=cfg.teacher.model,
            engine=cfg.engine,
            ray_cfg=ray_cfg,
            sampling=SamplingSpec(max_tokens=max_tokens, temperature=0.0),
        )
        for r in batch
    ]
    wall = time.perf_counter() - t0
    toks = sum(sum(r["num_generated_tokens"]) for r in rows)
    return {
        "num_actors": num_actors,
        "num_cpus_per_actor": ray_cfg.num_cpus_per_actor,
        "batch_size": ray_cfg.batch_size,
        "wall_s": round(wall, 2),
        "num_rows": len(rows),
        "num_errors": sum(bool(r["error"]) for r in rows),
        "generated_tokens": toks,
        "tokens_per_s_end_to_end": throughput(toks, wall),
        "load_avg_before": load_before,
        "load_avg_after": load_avg(),
    }


def run_two_node(items: list[dict[str, str]], cfg: Config, max_tokens: int) -> dict[str, Any]:
    """2 actors on a simulated 2-node cluster (ray.cluster_utils.Cluster on this machine).

    The head gets no CPUs and each worker node one, so each 1-CPU actor lands on its own node and rows
    cross raylets and object stores as they would between machines. Same cores as the one-node runs:
    this measures Ray's multi-node bookkeeping and transfer cost, not more hardware.
    """
    import ray
    from ray.cluster_utils import Cluster

    t0 = time.perf_counter()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": False},
    )
    for _ in range(2):
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    ray.init(address=cluster.address)
    start_s = time.perf_counter() - t0
    try:
        two = dataclasses.replace(cfg, ray=dataclasses.replace(cfg.ray, num_cpus_per_actor=1.0))
        out = run_ray(items, two, max_tokens, 2)
        out["num_nodes"] = len([n for n in ray.nodes() if n["Alive"]])
    finally:
        ray.shutdown()
        cluster.shutdown()
    return {
        **out,
        "cluster_start_s": round(start_s, 2),
        "simulated": "3 raylets (head 0 CPU + 2 workers x 1 CPU) on one machine",
    }


def run(
    traces: list[dict[str, Any]],
    cfg: Config,
    num_prompts: int,
    max_tokens: int,
    repeats: int,
    actor_counts: tuple[int, ...],
) -> dict[str, Any]:
    from bench.common import ratio
    from palign_ray.ray_env import init_ray

    items = generation_items(traces, num_prompts)
    bare = run_bare(items, cfg, max_tokens, repeats)
    t0 = time.perf_counter()
    ray = init_ray(cfg.ray)
    ray_init_s = time.perf_counter() - t0
    try:
        pools = [{**run_ray(items, cfg, max_tokens, n), "num_nodes": 1} for n in actor_counts]
    finally:
        ray.shutdown()
    pools.append(run_two_node(items, cfg, max_tokens))
    bare_e2e = bare["median_generate_s"] + bare["engine_start_s"]
    for p in pools:
        p["overhead_s_vs_bare_end_to_end"] = round(p["wall_s"] - bare_e2e, 2)
        p["throughput_ratio_vs_bare_end_to_end"] = ratio(
            p["tokens_per_s_end_to_end"], bare["tokens_per_s_end_to_end"]
        )
        p["throughput_ratio_vs_bare_generate_only"] = ratio(
            p["tokens_per_s_end_to_end"], bare["tokens_per_s_generate"]
        )
    return {
        "num_prompts": len(items),
        "max_tokens": max_tokens,
        "sampling": "greedy",
        "ray_init_s": round(ray_init_s, 2),
        "bare": bare,
        "ray_data": pools,
    }
