"""Joining or starting Ray: a cluster when RAY_ADDRESS/ray.address is set, else a local loopback Ray."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from palign_ray.config import RayConfig

log = logging.getLogger(__name__)

# Environment variables are read here and nowhere else (infrastructure only).
_LOOPBACK_ENV = {
    # Without it Ray swaps 127.0.0.1 for the machine's network address and talks to itself over it.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}
# Read by the raylet at start (a local Ray inherits this process's environment; on a cluster the node's
# `ray start` environment: cluster/raycluster.yaml). Each worker gets its own process group, killed
# when the worker exits or is killed: a force-killed engine actor does not leave vLLM's EngineCore
# child holding the GPU. (Ray 2.60's replacement for the deprecated raylet subreaper.)
REAP_ENV = {"RAY_process_group_cleanup_enabled": "1"}


def ray_address(cfg: RayConfig) -> str:
    return cfg.address or os.environ.get("RAY_ADDRESS", "")


def init_ray(cfg: RayConfig) -> Any:
    """Idempotent `ray.init`: join the configured cluster, or start a loopback-only local Ray."""
    import ray

    from palign_ray import console

    if ray.is_initialized():
        return ray
    console.prepare_ray()  # quiet `palign run`: Ray Data's bars off, Ray's stderr handlers onto our log files
    address = ray_address(cfg)
    if address:
        log.info("joining Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=console.log_to_driver())
        console.adopt_library_loggers()  # ray.init(configure_logging=True) attached a stderr handler again
        return ray
    for key, value in {**_LOOPBACK_ENV, **REAP_ENV}.items():
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
        # Quiet: the workers' output (vLLM engines, DeepSpeed ranks) stays in Ray's session logs, from
        # which palign_ray.console copies it into <run_dir>/logs/<stage>.log.
        log_to_driver=console.log_to_driver(),
        configure_logging=False,
    )
    console.adopt_library_loggers()
    return ray


def actor_resources(cfg: RayConfig, cpu_threads: int | None = None) -> dict[str, Any]:
    """map_batches resource kwargs for one vLLM actor; `cpu_threads`: its engine's threads on CPU."""
    res: dict[str, Any] = {"num_cpus": cfg.num_cpus_per_actor}
    env = engine_env(cpu_threads)
    if env:
        res["runtime_env"] = {"env_vars": env}
    if cfg.num_gpus_per_actor:
        res["num_gpus"] = cfg.num_gpus_per_actor
    # A killed actor (preempted node, OOM) is restarted and its in-flight batch retried, so a stage
    # completes instead of failing; results are deterministic per problem (seeds from problem_id).
    # Restarts are capped: an engine that cannot start would otherwise restart forever.
    res["max_restarts"] = cfg.max_actor_restarts
    res["max_task_retries"] = -1
    return res


def without_stall_guard(ds: Any, cfg: RayConfig) -> Any:
    """`ds` with Ray Data's no-progress guard set from `ray.stall_timeout_s` (0: off).

    Ray fails a dataset after 30 min in which no block moved; a stage's parts are single UDF calls
    that can legitimately run longer (the stage has its own liveness: actor restarts, retried parts).
    """
    ds.context.execution_no_progress_timeout_s = cfg.stall_timeout_s or -1
    return ds


def engine_env(cpu_threads: int | None) -> dict[str, str]:
    """Environment of an engine actor: on vLLM-CPU, OpenMP sized to the engine's threads.

    Ray sets OMP_NUM_THREADS=1 in an actor with fractional num_cpus unless its environment sets it, and
    OpenMP reads it once, at process start, for every thread: an engine told otherwise later runs its
    scheduler thread on one thread and vLLM-CPU's attention refuses the mismatch ("thread_num (1 vs. 2)").
    On CUDA the setting is left to vLLM (it wants one torch thread while serving).
    """
    from palign_ray.engines.vllm_engine import is_cpu_build

    if cpu_threads is None or not is_cpu_build():
        return {}
    return {"OMP_NUM_THREADS": str(cpu_threads)}


def free_resources() -> dict[str, float]:
    """Unreserved CPU/GPU of the cluster now ({} when Ray is not running in this process)."""
    import ray

    if not ray.is_initialized():
        return {}
    free = ray.available_resources()
    return {k: float(free.get(k, 0.0)) for k in ("CPU", "GPU")}


def wait_for_release(
    before: dict[str, float], timeout_s: float = 120.0, poll_s: float = 0.25
) -> float:
    """Block until CPU/GPU are back to `before` (the level when a stage started); returns seconds waited.

    Ray Data drops an actor pool's handles when the dataset is exhausted and the actors exit when they
    are garbage-collected, which can lag. A vLLM engine that still holds its GPUs would make the next
    stage (Ray Train on the same GPUs) fail with out-of-memory, so the pipeline waits for the logical
    resources, which Ray frees only once the actor process has exited.
    """
    import gc

    import ray

    if not before or not ray.is_initialized():
        return 0.0
    gc.collect()  # iterators and datasets in reference cycles keep actor handles alive
    t0 = time.monotonic()
    while True:
        now = free_resources()
        total = ray.cluster_resources()
        # A node that left meanwhile cannot give its share back: cap the target at what exists now.
        short = {
            k: v
            for k, v in before.items()
            if now.get(k, 0.0) + 1e-6 < min(v, float(total.get(k, 0.0)))
        }
        waited = time.monotonic() - t0
        if not short:
            return waited
        if waited > timeout_s:
            log.warning(
                "engines of the last stage still hold %s after %.0f s (free now %s); going on",
                short,
                waited,
                now,
            )
            return waited
        time.sleep(poll_s)


# ---- device memory: on GPU nodes, the hand-off also waits for the memory itself -------------------


def gpu_processes_on_this_node() -> list[dict[str, Any]]:
    """Compute processes holding memory on this node's GPUs (NVML sees every GPU, whatever CUDA_VISIBLE_DEVICES)."""
    import pynvml  # nvidia-ml-py, installed with CUDA vLLM

    pynvml.nvmlInit()
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                out.append(
                    {"gpu": i, "pid": int(p.pid), "used_mib": int((p.usedGpuMemory or 0) // 2**20)}
                )
        return out
    finally:
        pynvml.nvmlShutdown()


def describe_holders(holders: dict[str, list[dict[str, Any]]]) -> str:
    """'node n1: GPU 0 pid 123 (20480 MiB); ...' for an error message."""
    return "; ".join(
        f"node {node}: "
        + ", ".join(f"GPU {p['gpu']} pid {p['pid']} ({p['used_mib']} MiB)" for p in procs)
        for node, procs in sorted(holders.items())
        if procs
    )


def on_every_gpu_node(fn: Callable[[], Any]) -> dict[str, Any]:
    """`fn()` run once on each live GPU node, as a zero-CPU task pinned there; {short node id: result}.

    {} without GPUs (or without Ray).
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not ray.is_initialized() or not ray.cluster_resources().get("GPU"):
        return {}
    probe = ray.remote(num_cpus=0)(fn)
    refs = {
        n["NodeID"]: probe.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote()
        for n in ray.nodes()
        if n.get("Alive") and n.get("Resources", {}).get("GPU")
    }
    return {n[:8]: ray.get(r, timeout=60) for n, r in refs.items()}


def beside_driver(cfg: RayConfig, fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` in a Ray worker process on the driver's node (zero-CPU task); its result.

    For driver-side steps that would load whole inputs or heavy libraries (a benchmark file, a
    tokenizer): the driver of a long stream stays small, and paths mean what they mean to the driver.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ray = init_ray(cfg)
    here = ray.get_runtime_context().get_node_id()
    task = ray.remote(num_cpus=0, max_retries=0)(fn).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)
    )
    return ray.get(task.remote(*args))


def gpu_holders() -> dict[str, list[dict[str, Any]]]:
    """Per GPU node (short id): the processes holding GPU memory there (NVML)."""
    return on_every_gpu_node(gpu_processes_on_this_node)


def _driver_version_on_this_node() -> str:
    import pynvml

    pynvml.nvmlInit()
    try:
        v = pynvml.nvmlSystemGetDriverVersion()
        return v.decode() if isinstance(v, bytes) else str(v)
    finally:
        pynvml.nvmlShutdown()


def gpu_driver_versions() -> dict[str, str]:
    """Per GPU node (short id), its NVIDIA driver version."""
    return on_every_gpu_node(_driver_version_on_this_node)


def device_snapshot() -> dict[str, set[int]]:
    """Per GPU node, the pids holding GPU memory now (before a stage: not the stage's to wait for)."""
    return {node: {p["pid"] for p in procs} for node, procs in gpu_holders().items()}


def new_holders(
    baseline: dict[str, set[int]], holders: dict[str, list[dict[str, Any]]]
) -> dict[str, list[dict[str, Any]]]:
    """The holders that were not there before the stage (an MPS server or a monitor agent was)."""
    return {
        node: [p for p in procs if p["pid"] not in baseline.get(node, set())]
        for node, procs in holders.items()
    }


def wait_for_device_memory(
    baseline: dict[str, set[int]] | None = None,
    timeout_s: float = 120.0,
    poll_s: float = 1.0,
    probe: Callable[[], dict[str, list[dict[str, Any]]]] = gpu_holders,
) -> float:
    """Block until no process that appeared since `baseline` holds GPU memory; raise naming them after
    `timeout_s`. Returns seconds waited; a no-op without GPUs.

    Ray frees an actor's logical GPUs when its process exits, but a tensor-parallel worker process
    (or a Ray Train rank's child) that lingers keeps its memory, and the next stage's engines (or
    Ray Train) would fail their free-memory check. Processes that held memory before the stage (an
    MPS server, a monitoring agent, another job) are not waited for.
    """
    t0, waited = time.monotonic(), 0.0
    while True:
        left = new_holders(baseline or {}, probe())
        if not any(left.values()):
            return waited
        if waited > timeout_s:
            raise RuntimeError(
                f"GPU memory still held {waited:.0f} s after the stage's actors exited: "
                f"{describe_holders(left)}; kill those processes (or raise the wait) before the next stage"
            )
        time.sleep(poll_s)
        waited = time.monotonic() - t0
