"""The DeepSpeed config dict and the lr schedule are pure functions of SFTConfig."""

from __future__ import annotations

import dataclasses
import math
import sys

import pytest

from palign_ray.config import SFTConfig
from palign_ray.sft.deepspeed_config import ds_config, lr_ratio, resolve_precision, warmup_steps


def test_default_is_zero2_bf16_with_batch_arithmetic():
    cfg = SFTConfig(micro_batch_size=4, grad_accum_steps=3, grad_clip=0.5, precision="bf16")
    d = ds_config(cfg, world_size=2, on_gpu=False)
    assert d["zero_optimization"]["stage"] == 2
    assert "offload_optimizer" not in d["zero_optimization"]
    assert d["bf16"] == {"enabled": True}
    assert d["train_batch_size"] == 4 * 3 * 2
    assert d["train_micro_batch_size_per_gpu"] == 4 and d["gradient_accumulation_steps"] == 3
    assert d["gradient_clipping"] == 0.5
    assert (
        "optimizer" not in d and "scheduler" not in d
    )  # client AdamW + LambdaLR, no JIT-built Adam


def test_zero3_offload_fp32_on_cpu():
    cfg = SFTConfig(zero_stage=3, offload_optimizer=True, precision="fp32")
    d = ds_config(cfg, world_size=4, on_gpu=False)
    z = d["zero_optimization"]
    assert z["stage"] == 3 and "stage3_param_persistence_threshold" in z
    assert z["offload_optimizer"] == {"device": "cpu", "pin_memory": False}
    assert d["bf16"] == {"enabled": False}
    assert d["zero_force_ds_cpu_optimizer"] is False


def test_gpu_offload_uses_pinned_memory_and_ds_cpu_adam():
    d = ds_config(SFTConfig(offload_optimizer=True, precision="bf16"), world_size=8, on_gpu=True)
    assert d["zero_optimization"]["offload_optimizer"]["pin_memory"] is True
    assert d["zero_optimization"]["overlap_comm"] is True
    assert "zero_force_ds_cpu_optimizer" not in d


@pytest.mark.parametrize(
    "bad,match",
    [
        (dict(zero_stage=1), "zero_stage=1"),
        (dict(precision="fp32"), "precision"),
    ],
)
def test_rejects_bad_settings(bad, match):
    with pytest.raises(ValueError, match=match):
        ds_config(
            dataclasses.replace(SFTConfig(precision="bf16"), **bad), world_size=2, on_gpu=True
        )
    with pytest.raises(ValueError, match="world_size"):
        ds_config(SFTConfig(precision="bf16"), world_size=0, on_gpu=False)


def test_auto_precision_is_bf16_only_where_bf16_is_native():
    """auto: bf16 on GPU or a native-bf16 CPU, fp32 elsewhere; an explicit choice is kept as given."""
    assert resolve_precision("auto", on_gpu=True, cpu_bf16_native=False) == "bf16"
    assert resolve_precision("auto", on_gpu=False, cpu_bf16_native=True) == "bf16"
    assert resolve_precision("auto", on_gpu=False, cpu_bf16_native=False) == "fp32"
    assert resolve_precision("bf16", on_gpu=False, cpu_bf16_native=False) == "bf16"
    assert resolve_precision("fp32", on_gpu=False, cpu_bf16_native=True) == "fp32"
    with pytest.raises(ValueError, match="fp16"):
        resolve_precision("fp16", on_gpu=True, cpu_bf16_native=True)
    with pytest.raises(ValueError, match="resolved first"):
        ds_config(SFTConfig(precision="auto"), world_size=2, on_gpu=False)


def test_deepspeed_accepts_the_dict():
    """DeepSpeed's own config parser takes what we build (no engine, no process group)."""
    from deepspeed.runtime.config import DeepSpeedConfig

    for cfg in (
        SFTConfig(precision="bf16"),
        SFTConfig(zero_stage=3, offload_optimizer=True, precision="fp32"),
    ):
        # Without a process group DeepSpeed sees world size 1 and checks the batch arithmetic against it.
        parsed = DeepSpeedConfig(
            ds_config(cfg, world_size=1, on_gpu=False), mpu=None, mesh_device=None
        )
        assert parsed.zero_optimization_stage == cfg.zero_stage
        assert parsed.train_batch_size == cfg.micro_batch_size * cfg.grad_accum_steps
        assert parsed.bfloat16_config.enabled == (cfg.precision == "bf16")


def test_warmup_then_cosine():
    total, warm = 20, warmup_steps(SFTConfig(warmup_ratio=0.1), 20)
    assert warm == 2
    ratios = [lr_ratio(s, total, warm) for s in range(total)]
    assert ratios[:2] == [0.5, 1.0]
    assert ratios[2] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(ratios[2:], ratios[3:], strict=False))  # monotone decay
    assert ratios[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 17 / 18)))
    assert lr_ratio(0, 10, 0) == 1.0 and lr_ratio(10, 10, 0) == pytest.approx(0.0)
    assert warmup_steps(SFTConfig(warmup_ratio=0.0), 50) == 0
    assert warmup_steps(SFTConfig(warmup_ratio=0.01), 5) == 1
    with pytest.raises(ValueError, match="warmup_ratio"):
        warmup_steps(SFTConfig(warmup_ratio=1.5), 10)


def test_sft_modules_import_lazily():
    import importlib

    for mod in ("palign_ray.sft.data", "palign_ray.sft.deepspeed_config", "palign_ray.sft.train"):
        importlib.import_module(mod)
    heavy = [m for m in ("ray", "torch", "deepspeed", "vllm") if m in sys.modules]
    if (
        heavy
    ):  # other tests in the same session may have imported them; check in a fresh interpreter
        import subprocess

        code = (
            "import sys, palign_ray.sft.train, palign_ray.sft.data, palign_ray.sft.deepspeed_config; "
            "print([m for m in ('ray', 'torch', 'deepspeed', 'vllm', 'transformers') if m in sys.modules])"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        assert out.strip() == "[]"
