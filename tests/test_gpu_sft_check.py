"""bench/gpu_sft_check.py runs end to end on CPU (gloo, tiny model), so the GPU check is tested before a GPU sees it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BLOCKED_IMPORTS = """\
import builtins, runpy, sys
_real_import = builtins.__import__
def _import(name, *args, **kwargs):
    if name.split(".")[0] in ("ray", "vllm", "pyarrow"):
        raise ImportError(f"{name} is not installed on the GPU check host")
    return _real_import(name, *args, **kwargs)
builtins.__import__ = _import
"""


@pytest.mark.slow  # two short DeepSpeed trainings + exports + reloads in one process: ~1 min on 2 idle cores
@pytest.mark.timeout(900)
def test_gpu_sft_check_runs_on_cpu(tiny_model, tmp_path):
    out = tmp_path / "check.json"
    args = [
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--model",
        tiny_model,
        "--steps",
        "4",
        "--max-seq-len",
        "96",
        "--num-examples",
        "8",
        "--out",
        str(out),
    ]
    # The GPU host has torch + transformers (+ deepspeed, accelerate) only: any import of ray, vllm or pyarrow
    # on the script's path fails here as it would there.
    cmd = [
        sys.executable,
        "-c",
        BLOCKED_IMPORTS + f"sys.argv = {['gpu_sft_check.py', *args]!r}\n"
        f"runpy.run_path({str(REPO / 'bench' / 'gpu_sft_check.py')!r}, run_name='__main__')\n",
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=850)
    assert done.returncode == 0, done.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["ok"] and res["gpu"] == "cpu"
    z2, z3 = res["runs"]
    assert (z2["zero_stage"], z3["zero_stage"]) == (2, 3)
    assert (
        not z2["load"]["partitioned_at_load"] and z3["load"]["partitioned_at_load"]
    )  # zero.Init at load
    for run in res["runs"]:
        assert len(run["steps"]) == 4 and run["loss_fell"]
        assert run["export"]["generates"] and run["export"]["files"]


def test_long_sequence_check_runs_on_cpu_at_a_tiny_shape(tmp_path):
    """bench/gpu_long_seq_check.py (issue 29.6) is ready for a GPU: on CPU at a tiny shape, with the GPU
    host's imports only, both loss paths run at two lengths and agree."""
    out = tmp_path / "long.json"
    args = ["--shape", "tiny", "--lengths", "64,128", "--chunks", "0,32", "--device", "cpu"]
    cmd = [
        sys.executable,
        "-c",
        BLOCKED_IMPORTS + f"sys.argv = {['gpu_long_seq_check.py', *args, '--out', str(out)]!r}\n"
        f"runpy.run_path({str(REPO / 'bench' / 'gpu_long_seq_check.py')!r}, run_name='__main__')\n",
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["ok"] and res["shape"] == "tiny" and 0 < res["trainable_params"] < res["params"]
    steps = {(r["tokens"], r["loss_chunk_tokens"]): r for r in res["steps"]}
    assert set(steps) == {(64, 0), (64, 32), (128, 0), (128, 32)}
    for n in (64, 128):  # the chunked loss is the full one (bf16 model: to bf16 noise)
        full, chunked = steps[(n, 0)]["loss"], steps[(n, 32)]["loss"]
        assert not steps[(n, 0)]["oom"] and abs(full - chunked) <= 0.02 * abs(full)
