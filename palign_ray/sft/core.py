"""The SFT step on one rank, without Ray: model load (ZeRO-3 partitioned), optimizer, DeepSpeed engine, loss.

train.py runs it under Ray Train; bench/gpu_sft_check.py runs it alone on one CUDA device (no Ray, no vLLM).
torch, transformers, deepspeed and peft are imported inside the functions.
"""

from __future__ import annotations

import logging
from typing import Any

from palign_ray.config import SFTConfig
from palign_ray.sft import data as D
from palign_ray.sft.deepspeed_config import ds_config, lr_ratio, warmup_steps
from palign_ray.sft.memory import MIB, peak_rss_during, setup_allocator

log = logging.getLogger(__name__)


def skip_shm_op_build() -> None:
    # deepspeed.init_distributed JIT-builds a shared-memory allreduce op (~30 s on a fresh
    # extensions dir) on the CPU accelerator. ZeRO over gloo never uses it, so skip the build
    # (measured: init 30 s → 1.7 s). Remove when DeepSpeed builds it lazily or makes it optional.
    import importlib

    comm: Any = importlib.import_module("deepspeed.comm.torch")
    comm.build_shm_op = lambda: None


def lora_config(cfg: SFTConfig) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_target_modules),
        task_type="CAUSAL_LM",
    )


def train_dtype(cfg: SFTConfig) -> Any:
    import torch

    return torch.bfloat16 if cfg.precision == "bf16" else torch.float32


def load_model(cfg: SFTConfig, model_path: str, ds_cfg: dict[str, Any]) -> Any:
    """Weights in the training dtype, LoRA and gradient checkpointing applied.

    The training dtype, not fp32: DeepSpeed casts the module to bf16 anyway and builds its fp32 master
    weights from those bf16 values, so an fp32 load only doubled the host peak. ZeRO-3: the model is
    built under deepspeed.zero.Init, so each rank holds only its partition from the start instead of
    a full copy that DeepSpeed partitions later.
    """
    from transformers import AutoModelForCausalLM

    zero3 = None
    if cfg.zero_stage == 3:
        from transformers.integrations import HfDeepSpeedConfig

        # transformers keeps only a weak reference: from_pretrained (and peft's layer init) see
        # ZeRO-3 only while this object is alive, so it lives until the model is built.
        zero3 = HfDeepSpeedConfig(ds_cfg)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=train_dtype(cfg), use_safetensors=True
        )
        if zero3 is not None:
            restore_fp32_buffers(model)
        model.config.use_cache = (
            False  # a KV cache would also disable packed-sequence mask detection
        )
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        if cfg.lora:
            from peft import get_peft_model

            model = get_peft_model(model, lora_config(cfg))
    finally:
        del zero3
    return model


def restore_fp32_buffers(model: Any) -> None:
    """Rebuild parameter-free modules whose float buffers zero.Init created in bf16, outside it, in fp32.

    zero.Init creates every floating tensor in the training dtype, the rotary embeddings' inv_freq
    included: a bf16 inv_freq shifts the rotary phase of every position (measured on SmolLM2: first-step
    loss 1.9485 instead of 1.9578, the value ZeRO-2 and the old full-copy ZeRO-3 load both give).
    These modules are built from the config alone, so a fresh one has the buffers transformers means.
    """
    import torch

    for mod in model.modules():
        bufs = dict(mod.named_buffers(recurse=False))
        low = [n for n, b in bufs.items() if b.is_floating_point() and b.dtype != torch.float32]
        if not low or list(mod.parameters(recurse=False)) or not hasattr(mod, "config"):
            continue
        fresh = type(mod)(mod.config)
        for n, b in fresh.named_buffers(recurse=False):
            mod.register_buffer(
                n, b.to(bufs[n].device), persistent=n not in mod._non_persistent_buffers_set
            )


def build_optimizer(cfg: SFTConfig, model: Any, on_gpu: bool) -> Any:
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.offload_optimizer and on_gpu:
        # Offloaded optimizer state lives in host memory: DeepSpeed's vectorised CPU Adam is far
        # faster there than torch's (it JIT-compiles once per machine, ~45 s).
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(
            params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, adamw_mode=True
        )
    # A client AdamW: DeepSpeed's own fused Adam would JIT-compile (~45 s) on every fresh machine.
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def build_engine(
    cfg: SFTConfig, model_path: str, world: int, on_gpu: bool, total_steps: int
) -> tuple[Any, dict[str, Any]]:
    """Load + deepspeed.initialize; returns the engine and this rank's host memory (MiB) of both phases.

    load_*: from_pretrained (+ LoRA), the part ZeRO-3 partitions; init_*: deepspeed.initialize (master
    weights, gradient partitions and the communication buckets, which dominate for small models).
    """
    import deepspeed
    import torch

    ds_cfg = ds_config(cfg, world, on_gpu)
    with setup_allocator():
        with peak_rss_during() as load:
            model = load_model(cfg, model_path, ds_cfg)
        partitioned = all(hasattr(p, "ds_id") for p in model.parameters())  # built under zero.Init
        held = sum(_held_bytes(p) for p in model.parameters())
        with peak_rss_during() as init:
            optimizer = build_optimizer(cfg, model, on_gpu)
            num_warmup = warmup_steps(cfg, total_steps)
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda s: lr_ratio(s, total_steps, num_warmup)
            )
            engine, _, _, _ = deepspeed.initialize(
                model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_cfg
            )
    out: dict[str, Any] = {
        "partitioned_at_load": partitioned,
        "load_params_mb": round(held / MIB, 1),
    }
    for phase, mem in (("load", load), ("init", init)):
        out |= {
            f"{phase}_rss_before_mb": round(mem["rss_before"] / MIB, 1),
            f"{phase}_peak_rss_mb": round(mem["peak"] / MIB, 1),
            f"{phase}_peak_increase_mb": round(mem["peak_increase"] / MIB, 1),
            f"{phase}_anon_before_mb": round(mem["anon_before"] / MIB, 1),
            f"{phase}_anon_peak_mb": round(mem["anon_peak"] / MIB, 1),
        }
    return engine, out


def _held_bytes(p: Any) -> int:
    """Bytes of one parameter this rank holds: its ZeRO-3 partition, else the whole tensor."""
    t = getattr(p, "ds_tensor", None)
    t = p if t is None else t
    return int(t.numel() * t.element_size())


def micro_loss(
    engine: Any, batch: dict[str, Any], device: Any, chunk_tokens: int = 0
) -> tuple[Any, float]:
    """Summed next-token cross-entropy over the batch's labelled tokens (fp32 logits).

    With `chunk_tokens`, logits exist for one chunk of positions at a time (see `chunked_loss`).
    """
    import torch
    import torch.nn.functional as F

    ids = torch.tensor(batch["input_ids"], device=device)
    labels = torch.tensor(batch["labels"], device=device)
    pos = torch.tensor(batch["position_ids"], device=device)
    parts = decoder_and_head(getattr(engine, "module", engine)) if chunk_tokens > 0 else None
    if parts is not None:
        decoder, head = parts
        hidden = decoder(input_ids=ids, position_ids=pos, use_cache=False).last_hidden_state
        loss = chunked_loss(hidden, head, labels, chunk_tokens)
        return loss, float(loss.item())
    logits = engine(input_ids=ids, position_ids=pos, use_cache=False).logits
    loss = F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]),
        labels[:, 1:].reshape(-1),
        ignore_index=D.IGNORE_INDEX,
        reduction="sum",
    )
    return loss, float(loss.item())


def decoder_and_head(model: Any) -> tuple[Any, Any] | None:
    """(decoder stack, output projection) of a causal LM whose logits are exactly head(decoder(x)).

    None where the model changes its logits after the projection (Gemma-2's final soft-capping, a
    logit scale) or does not expose the two parts: the loss then takes the full-logits path.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT (LoRA)
    cfg = getattr(base, "config", None)
    if any(getattr(cfg, k, None) for k in ("final_logit_softcapping", "logit_scale")):
        return None
    decoder = getattr(base, "model", None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if decoder is None or head is None:
        return None
    return decoder, head


def chunked_loss(hidden: Any, head: Any, labels: Any, chunk_tokens: int) -> Any:
    """Summed next-token cross-entropy of `head(hidden)`, `chunk_tokens` positions at a time.

    Each chunk's logits are recomputed in backward (activation checkpointing), so the peak is one
    chunk's fp32 logits instead of the whole sequence's. Chunks with no labelled token are skipped,
    except the first: a micro-batch with no label at all (a rank's filler in a short last step)
    still backpropagates through every parameter, as the full pass does, with zero gradients.
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    h, y = hidden[:, :-1], labels[:, 1:]
    labelled = (y != D.IGNORE_INDEX).any(dim=0).tolist()  # one host sync per micro-batch
    total = hidden.new_zeros((), dtype=torch.float32)
    # max(1, ...): a one-token filler batch has no position to predict, and its zero loss must
    # still have a graph (DeepSpeed's backward refuses a loss without grad_fn)
    for start in range(0, max(1, h.shape[1]), chunk_tokens):
        end = start + chunk_tokens
        if start and not any(labelled[start:end]):
            continue
        total = total + checkpoint(
            _chunk_ce, h[:, start:end], y[:, start:end], head, use_reentrant=False
        )
    return total


def _chunk_ce(h: Any, y: Any, head: Any) -> Any:
    import torch.nn.functional as F

    logits = head(h).float()
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        y.reshape(-1),
        ignore_index=D.IGNORE_INDEX,
        reduction="sum",
    )


def run_step(
    engine: Any,
    plan_step: tuple,
    examples: list[D.Example],
    *,
    rank: int,
    world: int,
    grad_accum_steps: int,
    pad_id: int,
    device: Any,
    loss_chunk_tokens: int = 0,
) -> tuple[float, int, int]:
    """One optimizer step of this rank: (loss sum, real tokens, pad tokens) before the all-reduce."""
    denom = max(1, D.step_loss_tokens(plan_step, examples))
    loss_sum, n_tok, n_pad = 0.0, 0, 0
    for micro in plan_step:
        batch = D.collate(micro[rank], examples, pad_id)
        loss, value = micro_loss(engine, batch, device, loss_chunk_tokens)
        # DeepSpeed divides by grad_accum_steps and averages over ranks; this scale turns the
        # sum into the per-token mean over the whole optimizer step (every rank knows `denom`).
        engine.backward(loss * (world * grad_accum_steps / denom))
        engine.step()
        loss_sum, n_tok, n_pad = (
            loss_sum + value,
            n_tok + batch["num_tokens"],
            n_pad + batch["num_pad_tokens"],
        )
    return loss_sum, n_tok, n_pad
