"""The hand-off between stages: a stage's actors must have exited before the next stage takes the hardware."""

from __future__ import annotations

import logging

import pytest

from palign_ray import records as R
from palign_ray.config import EngineConfig, RayConfig
from palign_ray.ray_env import free_resources, wait_for_release


def test_nothing_to_wait_for_without_a_baseline():
    assert wait_for_release({}) == 0.0


def test_wait_times_out_while_an_actor_holds_its_cpu_then_returns_when_it_exits(
    ray_session, caplog
):
    ray = ray_session
    before = free_resources()

    @ray.remote(num_cpus=1)
    class Holder:
        def ping(self) -> int:
            return 1

    holder = Holder.remote()
    assert ray.get(holder.ping.remote()) == 1
    with caplog.at_level(logging.WARNING, logger="palign_ray.ray_env"):
        waited = wait_for_release(before, timeout_s=1.0, poll_s=0.1)
    assert waited > 1.0 and "still hold" in caplog.text
    ray.kill(holder)
    del holder
    waited = wait_for_release(before, timeout_s=60.0, poll_s=0.1)
    assert waited < 60.0 and free_resources()["CPU"] >= before["CPU"]


def test_generation_pool_is_gone_after_the_stage(ray_session, tiny_model):
    """A real Ray Data pool of vLLM engines: once the stage has finished, its CPUs come back."""
    from palign_ray.config import Config, TeacherConfig
    from palign_ray.generation import generate_job
    from palign_ray.streaming import run_rows

    before = free_resources()
    items = [{R.PROBLEM_ID: str(i), R.PROMPT: f"count to {i}"} for i in range(4)]
    cfg = Config(
        teacher=TeacherConfig(model=tiny_model, max_tokens=4, temperature=0.0),
        engine=EngineConfig(max_model_len=512, max_num_seqs=8),
        ray=RayConfig(num_cpus=4, num_cpus_per_actor=0.5, batch_size=2),
    )
    rows, _, _, _ = run_rows(generate_job(cfg, len(items)), items)
    assert sorted(r[R.PROBLEM_ID] for r in rows) == ["0", "1", "2", "3"]
    waited = wait_for_release(before, timeout_s=120.0)
    assert waited < 120.0 and free_resources()["CPU"] >= before["CPU"]


def test_device_memory_wait_is_a_no_op_without_gpus(ray_session):
    from palign_ray.ray_env import wait_for_device_memory

    assert wait_for_device_memory(timeout_s=1.0) == 0.0


def test_holders_of_gpu_memory_are_named():
    from palign_ray.ray_env import describe_holders

    text = describe_holders({"a1b2c3d4": [{"gpu": 0, "pid": 4242, "used_mib": 20480}], "e5f6": []})
    assert text == "node a1b2c3d4: GPU 0 pid 4242 (20480 MiB)"


def test_cpu_engine_actors_get_their_threads_from_the_environment(monkeypatch):
    """Ray gives a fractional-CPU actor OMP_NUM_THREADS=1 unless its runtime env sets it; OpenMP reads it
    at process start, so the engine's threads travel there (torch.set_num_threads later crashed vLLM-CPU's
    attention: "thread_num (1 vs. 2)")."""
    import palign_ray.engines.vllm_engine as V
    from palign_ray.config import RayConfig
    from palign_ray.ray_env import actor_resources

    monkeypatch.setattr(V, "is_cpu_build", lambda: True)
    res = actor_resources(RayConfig(num_cpus_per_actor=0.5), cpu_threads=2)
    assert res["num_cpus"] == 0.5 and res["runtime_env"] == {"env_vars": {"OMP_NUM_THREADS": "2"}}
    assert "runtime_env" not in actor_resources(RayConfig())  # nothing resolved: Ray's default
    monkeypatch.setattr(V, "is_cpu_build", lambda: False)  # CUDA: vLLM sizes its own threads
    assert "runtime_env" not in actor_resources(RayConfig(), cpu_threads=2)


def test_a_killed_actors_child_process_dies_with_it(ray_session):
    """Issue 29.2: a force-killed actor (OOM kill, Ray Data on a failed task) left its engine's child
    process running. The local Ray starts with per-worker process groups, cleaned up on worker exit."""
    import os
    import signal
    import time

    import psutil

    @ray_session.remote(num_cpus=0, max_restarts=0)
    class Spawner:
        def spawn(self) -> tuple[int, int]:
            import os
            import subprocess

            child = subprocess.Popen(["sleep", "600"])  # as vLLM starts its EngineCore
            return os.getpid(), child.pid

    actor = Spawner.remote()
    worker, pid = ray_session.get(actor.spawn.remote())
    assert psutil.pid_exists(pid)
    os.kill(
        worker, signal.SIGKILL
    )  # as the OOM killer does: the worker cannot clean up after itself
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.5)
    assert not _alive(pid), "the killed actor's child is still running"


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_engine_actor_restarts_are_capped():
    from palign_ray.config import RayConfig
    from palign_ray.ray_env import actor_resources

    assert actor_resources(RayConfig())["max_restarts"] == 4
    assert actor_resources(RayConfig(max_actor_restarts=-1))["max_restarts"] == -1


def test_the_hand_off_waits_only_for_gpu_holders_that_appeared_during_the_stage():
    """Issue 29.2: the wait counted every process on the node, so a shared node (an MPS server, a
    monitoring agent) failed every stage after 120 s."""
    from palign_ray.ray_env import new_holders, wait_for_device_memory

    mps = {"gpu": 0, "pid": 11, "used_mib": 300}
    engine = {"gpu": 0, "pid": 99, "used_mib": 60000}
    baseline = {"node1": {11}}
    assert new_holders(baseline, {"node1": [mps, engine], "node2": [mps]}) == {
        "node1": [engine],
        "node2": [mps],  # pid 11 on another node is another process
    }
    polls = iter([{"node1": [mps, engine]}, {"node1": [mps, engine]}, {"node1": [mps]}])
    waited = wait_for_device_memory(baseline, timeout_s=5, poll_s=0.01, probe=lambda: next(polls))
    assert 0 < waited < 5  # returned once the stage's process was gone, the MPS server still there
    with pytest.raises(RuntimeError, match="pid 99"):
        wait_for_device_memory(
            baseline, timeout_s=0.05, poll_s=0.01, probe=lambda: {"node1": [mps, engine]}
        )
