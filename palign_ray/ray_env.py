"""Joining or starting Ray: a cluster when RAY_ADDRESS/ray.address is set, else a local loopback Ray."""

from __future__ import annotations

import logging
import os
from typing import Any

from palign_ray.config import RayConfig

log = logging.getLogger(__name__)

# Environment variables are read here and nowhere else (infrastructure only).
_LOOPBACK_ENV = {
    # Without it Ray swaps 127.0.0.1 for the machine's network address and talks to itself over it.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}


def ray_address(cfg: RayConfig) -> str:
    return cfg.address or os.environ.get("RAY_ADDRESS", "")


def init_ray(cfg: RayConfig) -> Any:
    """Idempotent `ray.init`: join the configured cluster, or start a loopback-only local Ray."""
    import ray

    if ray.is_initialized():
        return ray
    address = ray_address(cfg)
    if address:
        log.info("joining Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
        return ray
    for key, value in _LOOPBACK_ENV.items():
        os.environ.setdefault(key, value)
    num_cpus = cfg.num_cpus or os.cpu_count() or 2
    # vLLM actors reserve fractional CPUs; read/write tasks need the rest (see RayConfig docs).
    need = cfg.num_actors * cfg.num_cpus_per_actor
    if need >= num_cpus:
        raise ValueError(
            f"ray.num_actors × ray.num_cpus_per_actor = {need} leaves no CPU for Ray Data read tasks "
            f"on {num_cpus} CPUs (it would deadlock); lower them or raise ray.num_cpus"
        )
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=True,
        configure_logging=False,
    )
    return ray


def actor_resources(cfg: RayConfig) -> dict[str, float | int]:
    """map_batches resource kwargs for one vLLM actor."""
    res: dict[str, float] = {"num_cpus": cfg.num_cpus_per_actor}
    if cfg.num_gpus_per_actor:
        res["num_gpus"] = cfg.num_gpus_per_actor
    # A killed actor (preempted node, OOM) is restarted and its in-flight batch retried, so a stage
    # completes instead of failing; results are deterministic per problem (seeds from problem_id).
    res["max_restarts"] = -1
    res["max_task_retries"] = -1
    return res
