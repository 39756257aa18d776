"""Native-bf16 detection from /proc/cpuinfo text (x86 flags, Arm features)."""

from __future__ import annotations

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
