"""The DeepSpeed config dict and the learning-rate schedule, as pure functions of SFTConfig."""

from __future__ import annotations

import math
from typing import Any, Literal

from palign_ray.config import SFTConfig


def resolve_precision(
    requested: str, on_gpu: bool, cpu_bf16_native: bool
) -> Literal["bf16", "fp32"]:
    """The precision a run trains in: `auto` becomes bf16 on GPU or on a CPU with native bf16, else fp32.

    `cpu_bf16_native` must be agreed by every rank (the train loop takes the minimum), or the ranks
    would build engines of different dtypes and their collectives would not match.
    """
    if requested not in ("auto", "bf16", "fp32"):
        raise ValueError(f"sft.precision={requested!r}: use auto, bf16 or fp32")
    if requested == "auto":
        return "bf16" if on_gpu or cpu_bf16_native else "fp32"
    return "bf16" if requested == "bf16" else "fp32"


def ds_config(cfg: SFTConfig, world_size: int, on_gpu: bool) -> dict[str, Any]:
    """DeepSpeed JSON config for `cfg` on `world_size` ranks (the optimizer is a client one, not in here)."""
    if cfg.precision == "auto":
        raise ValueError("sft.precision=auto must be resolved first (resolve_precision)")
    if cfg.zero_stage not in (2, 3):
        raise ValueError(f"sft.zero_stage={cfg.zero_stage}: use 2 or 3")
    if world_size < 1:
        raise ValueError(f"world_size={world_size} must be >= 1")
    if on_gpu and cfg.precision != "bf16":
        raise ValueError(
            f"sft.precision={cfg.precision!r} on GPU: use bf16 (fp32 is for CPU debugging only)"
        )
    zero: dict[str, Any] = {
        "stage": cfg.zero_stage,
        "overlap_comm": on_gpu,  # on CPU/gloo overlap only adds threads competing for the same cores
        "contiguous_gradients": True,
        "reduce_bucket_size": 50_000_000,
    }
    if cfg.zero_stage == 3:
        # Gather each layer's parameters right before use; small models keep everything persistent.
        zero["stage3_param_persistence_threshold"] = 100_000
        zero["stage3_prefetch_bucket_size"] = 50_000_000
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
    out: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum_steps,
        "train_batch_size": cfg.micro_batch_size * cfg.grad_accum_steps * world_size,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.precision == "bf16"},
        "steps_per_print": 10**9,  # we log per step ourselves (rank 0)
        "wall_clock_breakdown": False,
    }
    if cfg.offload_optimizer and not on_gpu:
        # On a CPU-only box "offload" moves nothing; DeepSpeed's CPU Adam would JIT-compile (~45 s)
        # for no gain, so keep the client torch AdamW and tell DeepSpeed that is intended.
        out["zero_force_ds_cpu_optimizer"] = False
    return out


def warmup_steps(cfg: SFTConfig, total_steps: int) -> int:
    """Linear-warmup length: warmup_ratio of the run, rounded up, at least 1 when the ratio is > 0."""
    if not 0.0 <= cfg.warmup_ratio < 1.0:
        raise ValueError(f"sft.warmup_ratio={cfg.warmup_ratio} must be in [0, 1)")
    return math.ceil(cfg.warmup_ratio * total_steps) if cfg.warmup_ratio > 0 else 0


def lr_ratio(step: int, total_steps: int, num_warmup: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the peak lr for optimizer step `step` (0-based): linear warmup, then cosine to min_ratio."""
    if step < num_warmup:
        return (step + 1) / num_warmup
    decay_steps = max(1, total_steps - num_warmup)
    progress = min(1.0, (step - num_warmup) / decay_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
