"""Native-bf16 detection from /proc/cpuinfo text (x86 flags, Arm features)."""

from __future__ import annotations

import pytest

from palign_ray.hardware import bf16_in_cpuinfo

AVX2_EPYC = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: avx2\n"
AVX512_BF16 = "processor\t: 0\nflags\t\t: avx2 avx512f avx512_vnni avx512_bf16\n"
AMX = "flags\t\t: avx2 avx512f amx_tile amx_bf16 amx_int8\n"
NEOVERSE = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


def test_bf16_flags_are_read_from_the_first_cpu():
    assert not bf16_in_cpuinfo(AVX2_EPYC)
    assert bf16_in_cpuinfo(AVX512_BF16) and bf16_in_cpuinfo(AMX) and bf16_in_cpuinfo(NEOVERSE)
    assert not bf16_in_cpuinfo("flags\t: avx512f avx512bw\n")  # AVX-512 without BF16 emulates it
    assert not bf16_in_cpuinfo("")


def test_nvidia_drivers_older_than_the_lock_needs_are_named():
    """Issue 29.1: on a driver older than 580 the first engine failed with a CUDA error naming nothing."""
    from palign_ray.hardware import driver_problems

    got = driver_problems({"aa11": "580.65.06", "bb22": "550.127.05", "cc33": "n/a"})
    assert len(got) == 2
    assert got[0].startswith("node bb22: NVIDIA driver 550.127.05 is older than 580")
    assert "requirements/gpu.lock" in got[0] and "unreadable" in got[1]
    assert driver_problems({"a": "590.1"}) == [] and driver_problems({}) == []


def test_a_run_on_an_old_driver_stops_before_any_stage(tmp_path, monkeypatch):
    import palign_ray.pipeline as P
    import palign_ray.ray_env as E
    from palign_ray.config import load_config

    monkeypatch.setattr(E, "init_ray", lambda cfg: None)
    monkeypatch.setattr(E, "gpu_driver_versions", lambda: {"bb22": "550.127.05"})
    cfg = load_config(None, [f"run.run_dir={tmp_path}"])
    with pytest.raises(P.PipelineError, match="node bb22: NVIDIA driver 550.127.05"):
        P.run_pipeline(cfg)
    assert list(tmp_path.iterdir()) == []  # nothing ran, nothing written
    P.check_gpu_drivers(
        cfg, [s for s in P.STAGES if s.name in ("problems", "sft_data")]
    )  # no hardware
