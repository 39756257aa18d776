"""Student SFT under Ray Train (TorchTrainer) + DeepSpeed ZeRO: checkpoints, resume, HF export.

Run as: palign train --data SHARDS_DIR --output MODEL_DIR [sft.zero_stage=3 sft.lora=true ...]
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from palign_ray import records as R
from palign_ray.artifacts import write_json, write_parquet
from palign_ray.config import RayConfig, SFTConfig
from palign_ray.sft import data as D
from palign_ray.sft.deepspeed_config import ds_config, lr_ratio, warmup_steps

log = logging.getLogger(__name__)

TAG = "zero"  # DeepSpeed checkpoint tag inside every reported checkpoint directory
TRAIN_STATE = "train_state.json"  # rank 0 writes it next to the ZeRO shards
RUN_NAME = "sft"
RUN_SUBDIR = "ray_train"  # <output>/ray_train/sft/checkpoint_000004/...


@dataclasses.dataclass(frozen=True)
class FailureInjection:
    """Test hook: the last rank exits hard after optimizer step `step` while `marker` does not exist."""

    step: int
    marker: str


# ---------------------------------------------------------------- per-worker helpers


def _skip_shm_op_build() -> None:
    # deepspeed.init_distributed JIT-builds a shared-memory allreduce op (~30 s on a fresh
    # extensions dir) on the CPU accelerator. ZeRO over gloo never uses it, so skip the build
    # (measured: init 30 s → 1.7 s). Remove when DeepSpeed builds it lazily or makes it optional.
    import importlib

    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def lora_config(cfg: SFTConfig) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_target_modules), task_type="CAUSAL_LM")


def _load_model(cfg: SFTConfig, model_path: str) -> Any:
    """fp32 weights (DeepSpeed casts to bf16 itself and keeps fp32 masters), LoRA and checkpointing applied."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, use_safetensors=True)
    model.config.use_cache = False  # a KV cache would also disable packed-sequence mask detection
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora:
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(cfg))
    return model


def _optimizer(cfg: SFTConfig, model: Any, on_gpu: bool) -> Any:
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.offload_optimizer and on_gpu:
        # Offloaded optimizer state lives in host memory: DeepSpeed's vectorised CPU Adam is far
        # faster there than torch's (it JIT-compiles once per machine, ~45 s).
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, adamw_mode=True)
    # A client AdamW: DeepSpeed's own fused Adam would JIT-compile (~45 s) on every fresh machine.
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def _schedule(plans: list[D.EpochPlan], max_steps: int) -> list[tuple[int, int]]:
    """(epoch, step in epoch) for every optimizer step of the run."""
    sched = [(p.epoch, s) for p in plans for s in range(len(p.steps))]
    return sched[:max_steps] if max_steps > 0 else sched


def _micro_loss(engine: Any, batch: dict[str, Any], device: Any) -> tuple[Any, float]:
    """Summed next-token cross-entropy over the batch's labelled tokens (fp32 logits)."""
    import torch
    import torch.nn.functional as F

    ids = torch.tensor(batch["input_ids"], device=device)
    labels = torch.tensor(batch["labels"], device=device)
    pos = torch.tensor(batch["position_ids"], device=device)
    logits = engine(input_ids=ids, position_ids=pos, use_cache=False).logits
    loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                           ignore_index=D.IGNORE_INDEX, reduction="sum")
    return loss, float(loss.item())


def _save_and_report(engine: Any, cfg: SFTConfig, metrics: dict[str, Any], state: dict[str, Any], rank: int) -> None:
    """Every rank writes its ZeRO shard into a temp dir; Ray merges them into one checkpoint dir."""
    import ray.train

    tmp = tempfile.mkdtemp(prefix="palign-sft-ckpt-")
    try:
        # LoRA: the frozen base weights are not checkpointed (export reloads them from sft.model).
        engine.save_checkpoint(tmp, tag=TAG, exclude_frozen_parameters=cfg.lora)
        if rank == 0:
            Path(tmp, TRAIN_STATE).write_text(json.dumps(state))
        write_file_sizes(Path(tmp), rank)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=f"checkpoint_{state['global_step']:06d}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _restore(engine: Any, cfg: SFTConfig, geometry: dict[str, Any], run_dir: Path) -> dict[str, Any] | None:
    """Load the newest checkpoint of this run: after a worker failure (FailureConfig) or `sft.resume=true`.

    Ray's get_checkpoint() alone is not enough: the controller registers a reported checkpoint
    only when it next polls the workers, so a worker that dies within that interval after a report
    restarts the run from an older checkpoint (seen here: from scratch), and the run snapshot that
    a new run reads is written asynchronously. The scan of the run directory finds it regardless.
    """
    import ray.train

    on_disk = latest_complete_checkpoint(run_dir)
    candidates = [c for c in (ray.train.get_checkpoint(), on_disk and ray.train.Checkpoint(str(on_disk))) if c]
    if not candidates:
        return None
    ckpt = max(candidates, key=lambda c: checkpoint_step(Path(c.path)))
    with ckpt.as_directory() as d:
        state = json.loads(Path(d, TRAIN_STATE).read_text())
        if state["geometry"] != geometry:
            raise ValueError(f"checkpoint {ckpt.path} was written with {state['geometry']}, this run has {geometry}; "
                             "the data plan would change (resume with the same shards, sft.* batch settings and workers)")
        engine.load_checkpoint(d, tag=TAG, load_module_strict=not cfg.lora)
    state["restarts"] = state.get("restarts", []) + [state["global_step"]]
    return state


def _check_failure_injection(inject: FailureInjection | None, step: int, rank: int, world: int) -> None:
    if inject is not None and step == inject.step and rank == world - 1 and not os.path.exists(inject.marker):
        Path(inject.marker).write_text(f"killed rank {rank} after step {step}\n")
        log.warning("failure injection: rank %d exits after step %d", rank, step)
        os._exit(1)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: data plan → deepspeed.initialize → steps → checkpoints via ray.train.report."""
    import deepspeed
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    cfg: SFTConfig = config["sft"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    on_gpu = cfg.use_gpu
    device = ray.train.torch.get_device() if on_gpu else torch.device("cpu")
    if not on_gpu:
        _skip_shm_op_build()
    # Ray Train already created the process group (gloo on CPU, nccl on GPU); DeepSpeed reuses it.
    deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo", auto_mpi_discovery=False)

    t_setup = time.perf_counter()
    # Every rank reads the whole (small) shard set and derives the same deterministic plan.
    rows = list(ray.train.get_dataset_shard("train").iter_rows())
    t_read = time.perf_counter()
    examples, _ = D.validate_rows(rows, cfg.max_seq_len)
    if not examples:
        raise ValueError(f"no trainable examples in {len(rows)} shard rows (see quarantine)")
    lengths = [e.num_tokens for e in examples]
    plans = [D.plan_epoch(lengths, config["seed"], ep, cfg.max_seq_len, cfg.packing, world,
                          cfg.micro_batch_size, cfg.grad_accum_steps) for ep in range(cfg.epochs)]
    schedule = _schedule(plans, cfg.max_steps)
    total = len(schedule)
    geometry = {"fingerprint": D.fingerprint(examples), "world_size": world, "seed": config["seed"],
                "micro_batch_size": cfg.micro_batch_size, "grad_accum_steps": cfg.grad_accum_steps,
                "packing": cfg.packing, "max_seq_len": cfg.max_seq_len, "epochs": cfg.epochs, "total_steps": total}

    model = _load_model(cfg, config["model_path"])
    optimizer = _optimizer(cfg, model, on_gpu)
    num_warmup = warmup_steps(cfg, total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_ratio(s, total, num_warmup))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_config(cfg, world, on_gpu))
    state = _restore(engine, cfg, geometry, Path(config["run_dir"])) or {"global_step": 0, "history": [], "geometry": geometry}
    start = state["global_step"]
    if rank == 0:
        log.info("sft: %d examples, %d steps (start at %d), %d warmup, world %d, ZeRO-%d, %s; setup %.1f s (data read %.1f s)",
                 len(examples), total, start, num_warmup, world, cfg.zero_stage, cfg.precision,
                 time.perf_counter() - t_setup, t_read - t_setup)
    from tqdm import tqdm

    bar = tqdm(total=total, initial=start, desc="sft", disable=rank != 0, mininterval=2.0)
    every = cfg.checkpoint_every or total
    pad_id = config["pad_id"]
    for gstep in range(start, total):
        epoch, s = schedule[gstep]
        plan_step = plans[epoch].steps[s]
        denom = max(1, D.step_loss_tokens(plan_step, examples))
        lr = engine.get_lr()[0]
        t0 = time.perf_counter()
        loss_sum, n_tok, n_pad = 0.0, 0, 0
        for micro in plan_step:
            batch = D.collate(micro[rank], examples, pad_id)
            loss, value = _micro_loss(engine, batch, device)
            # DeepSpeed divides by grad_accum_steps and averages over ranks; this scale turns the
            # sum into the per-token mean over the whole optimizer step (every rank knows `denom`).
            engine.backward(loss * (world * cfg.grad_accum_steps / denom))
            engine.step()
            loss_sum, n_tok, n_pad = loss_sum + value, n_tok + batch["num_tokens"], n_pad + batch["num_pad_tokens"]
        totals = torch.tensor([loss_sum, n_tok, n_pad], dtype=torch.float64, device=device)  # nccl: on the GPU
        dist.all_reduce(totals)
        dt = time.perf_counter() - t0
        grad_norm = engine.get_global_grad_norm()
        rec = {"step": gstep + 1, "epoch": epoch, "loss": totals[0].item() / denom, "lr": lr,
               "grad_norm": float(grad_norm) if grad_norm is not None else math.nan,
               "step_time_s": round(dt, 4), "tokens_per_s": round(totals[1].item() / dt, 1),
               "num_tokens": int(totals[1].item()), "num_pad_tokens": int(totals[2].item())}
        state["history"].append(rec)
        state["global_step"] = gstep + 1
        if rank == 0:
            log.info("step %d/%d loss %.4f lr %.3g %.1f tok/s %.2f s", gstep + 1, total, rec["loss"], lr, rec["tokens_per_s"], dt)
            bar.update(1)
        _check_failure_injection(config.get("inject_failure"), gstep + 1, rank, world)
        if (gstep + 1) % every == 0 or gstep + 1 == total:
            _save_and_report(engine, cfg, rec, state, rank)
    bar.close()


# ---------------------------------------------------------------- driver side


def _check_shards(files: list[str]) -> None:
    import pyarrow.parquet as pq

    for f in files:
        R.require_columns(D.STAGE, pq.read_schema(f).names, D.SHARD_COLUMNS, source=f)


def _read_all_rows(files: list[str]) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    for f in files:
        rows += pq.read_table(f, columns=list(D.SHARD_COLUMNS)).to_pylist()
    return rows


def checkpoint_step(ckpt_dir: Path) -> int:
    """Global step of a checkpoint directory written by this module (-1 if it is not one)."""
    try:
        return int(json.loads((ckpt_dir / TRAIN_STATE).read_text())["global_step"])
    except (OSError, ValueError, KeyError):
        return -1


def _sizes_file(rank: int) -> str:
    return f"files_rank{rank}.json"


def write_file_sizes(ckpt_dir: Path, rank: int) -> None:
    """List this rank's checkpoint files with their byte sizes, so a reader can tell a finished upload from a cut one."""
    sizes = {str(p.relative_to(ckpt_dir)): p.stat().st_size for p in sorted(ckpt_dir.rglob("*")) if p.is_file()}
    (ckpt_dir / _sizes_file(rank)).write_text(json.dumps(sizes))


def checkpoint_is_complete(ckpt_dir: Path) -> bool:
    """Every rank's file list arrived and every file it names has its full size.

    Ray copies each rank's files into the checkpoint directory one by one; a file appears when its copy
    starts, so a driver killed mid-copy leaves files that exist but are short (seen here: a torn ZeRO
    shard that DeepSpeed then fails to load). Sizes catch that; the lists themselves are tiny JSON files
    that do not parse when cut.
    """
    try:
        world = int(json.loads((ckpt_dir / TRAIN_STATE).read_text())["geometry"]["world_size"])
        for rank in range(world):
            sizes = json.loads((ckpt_dir / _sizes_file(rank)).read_text())
            for name, size in sizes.items():
                f = ckpt_dir / name
                if not f.is_file() or f.stat().st_size != size:
                    return False
        return world > 0
    except (OSError, ValueError, KeyError, TypeError):
        return False


def latest_complete_checkpoint(run_dir: Path) -> Path | None:
    """Newest checkpoint under run_dir whose every rank's files arrived whole (a crash can cut an upload short)."""
    best, best_step = None, -1
    for d in sorted(run_dir.glob("checkpoint_*")):
        step = checkpoint_step(d)
        if step > best_step and checkpoint_is_complete(d):
            best, best_step = d, step
    return best


def run_dir_of(output: str | Path) -> Path:
    """Where Ray Train keeps the checkpoints of the SFT run exported to `output`."""
    return Path(output) / RUN_SUBDIR / RUN_NAME


def _run_dirs(output: Path, resume: bool) -> Path:
    run_dir = run_dir_of(output)
    if resume and not run_dir.is_dir():
        raise ValueError(f"sft.resume=true but {run_dir} does not exist: nothing to resume")
    if not resume and run_dir.exists():
        raise ValueError(f"{run_dir} holds an earlier run: pass sft.resume=true to continue it, or remove it")
    return run_dir


def _ray_cfg_for(cfg: SFTConfig, ray_cfg: RayConfig) -> RayConfig:
    # Train workers take whole logical CPUs; Ray Data's read tasks need one more or they starve.
    need = math.ceil(cfg.num_workers * cfg.cpus_per_worker) + 1
    return dataclasses.replace(ray_cfg, num_cpus=max(ray_cfg.num_cpus or os.cpu_count() or 2, need), num_actors=0)


def run_sft(cfg: SFTConfig, data_dir: str | Path, output_dir: str | Path, *, seed: int = 0,
            ray_cfg: RayConfig | None = None, inject_failure: FailureInjection | None = None) -> dict[str, Any]:
    """Train on the shards in `data_dir`, export the HF model into `output_dir`; returns metrics.json's content."""
    import ray.data
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from palign_ray.models import resolve_model
    from palign_ray.ray_env import init_ray

    output = Path(output_dir).resolve()
    files = D.shard_files(data_dir)
    _check_shards(files)
    run_dir = _run_dirs(output, cfg.resume)
    if cfg.resume:
        found = latest_complete_checkpoint(run_dir)
        log.info("sft: resuming %s from %s", run_dir, found or "the start (no complete checkpoint yet)")
    model_path = resolve_model(cfg.model)
    meta = D.read_meta(data_dir)
    pad_id = _pad_id(model_path)
    t0 = time.perf_counter()
    init_ray(_ray_cfg_for(cfg, ray_cfg or RayConfig()))
    # Per-worker read progress bars of a few-MB shard set only bury the step log (restored below:
    # the driver's context is shared with the generation stages that run after training).
    data_ctx = ray.data.DataContext.get_current()
    bars, data_ctx.enable_progress_bars = data_ctx.enable_progress_bars, False
    resources = {"CPU": cfg.cpus_per_worker} | ({"GPU": 1} if cfg.use_gpu else {})
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"sft": cfg, "seed": seed, "model_path": model_path, "pad_id": pad_id,
                           "run_dir": str(run_dir), "inject_failure": inject_failure},
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=RUN_NAME, storage_path=str(run_dir.parent),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
        ),
        # Materialized once on the driver: workers (and restarted workers) then only fetch blocks
        # instead of each running its own read pipeline (measured: 10.5 s → 1.0 s per worker start).
        datasets={"train": ray.data.read_parquet(files, columns=list(D.SHARD_COLUMNS)).materialize()},
        # Not split: every rank reads all rows and takes its part of one deterministic plan, which is
        # what lets a restart skip exactly the examples already trained on.
        dataset_config=DataConfig(datasets_to_split=[]),
    )
    try:
        result = trainer.fit()
    finally:
        data_ctx.enable_progress_bars = bars
    train_s = time.perf_counter() - t0
    with result.checkpoint.as_directory() as d:
        state = json.loads(Path(d, TRAIN_STATE).read_text())
        export_model(Path(d), cfg, model_path, output, meta.get("chat_template"))
    log.info("sft: Ray Train run %.1f s, export %.1f s", train_s, time.perf_counter() - t0 - train_s)
    metrics, bad = _summary(cfg, files, state, train_s, seed)
    if bad:  # rows in = examples trained on + quarantined (with a reason each)
        write_parquet(output / "quarantine" / "part-sft.parquet", bad)
    write_json(output / "metrics.json", metrics)
    return metrics


def _pad_id(model_path: str) -> int:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if pad is None:
        raise ValueError(f"tokenizer of {model_path} has neither a pad nor an eos token")
    return int(pad)


def _summary(cfg: SFTConfig, files: list[str], state: dict[str, Any], train_s: float, seed: int
             ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """metrics.json: per-step history from the final checkpoint, throughput, padding share, row accounting."""
    examples, bad = D.validate_rows(_read_all_rows(files), cfg.max_seq_len)
    hist = state["history"]
    timed = hist[1:] or hist  # the first step includes warm-up allocations
    metrics = {
        "num_rows": len(examples) + len(bad), "num_examples": len(examples), "num_quarantined": len(bad),
        "quarantine_reasons": _count(b[R.REASON] for b in bad),
        "num_steps": state["global_step"], "restarts": state.get("restarts", []), "final_loss": hist[-1]["loss"] if hist else None,
        "mean_step_time_s": round(sum(h["step_time_s"] for h in timed) / max(1, len(timed)), 4),
        "mean_tokens_per_s": round(sum(h["tokens_per_s"] for h in timed) / max(1, len(timed)), 1),
        "wall_time_s": round(train_s, 1),
        **D.padding_report([e.num_tokens for e in examples], seed, cfg.max_seq_len, cfg.micro_batch_size),
        "geometry": state["geometry"], "history": hist,
    }
    return metrics, bad


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return out


# ---------------------------------------------------------------- export


def consolidated_state_dict(ckpt_dir: Path, lora: bool) -> dict[str, Any]:
    """ZeRO-2/3 shards of a checkpoint → one fp32 state dict (DeepSpeed's zero_to_fp32)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=TAG, exclude_frozen_parameters=lora)


def export_model(ckpt_dir: Path, cfg: SFTConfig, model_path: str, out_dir: Path, chat_template: str | None) -> None:
    """Full weights (LoRA merged) as HF safetensors + tokenizer + chat template in `out_dir` (vLLM-loadable)."""
    import torch
    from transformers import AutoTokenizer

    state = consolidated_state_dict(ckpt_dir, cfg.lora)
    model = _load_model(dataclasses.replace(cfg, gradient_checkpointing=False), model_path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"checkpoint {ckpt_dir} has weights the model lacks: {unexpected[:5]}")
    tied = {"lm_head.weight", "base_model.model.lm_head.weight"} if model.config.tie_word_embeddings else set()
    # LoRA checkpoints hold only the adapters: the frozen base weights come from sft.model.
    untrained = [k for k in missing if k not in tied and not (cfg.lora and "lora_" not in k)]
    if untrained:
        raise ValueError(f"checkpoint {ckpt_dir} lacks trained weights: {untrained[:5]}")
    if cfg.lora:
        model = model.merge_and_unload()
    model.config.use_cache = True
    model = model.to(torch.bfloat16 if cfg.export_dtype == "bf16" else torch.float32)
    tok = AutoTokenizer.from_pretrained(model_path)
    if chat_template:  # the template the shards were rendered with
        tok.chat_template = chat_template
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=".tmp-export-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        for f in tmp.iterdir():
            os.replace(f, out_dir / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported %s model to %s", cfg.export_dtype, out_dir)


# ---------------------------------------------------------------- CLI


def train_main(argv: list[str]) -> int:
    """Run as: palign train --data SHARDS_DIR --output MODEL_DIR [sft.zero_stage=3 sft.lora=true ...]"""
    import sys

    from palign_ray.cli import config_parser, parse_config

    p = config_parser("train", "Fine-tune sft.model on SFT shards with Ray Train + DeepSpeed ZeRO; export an HF model.")
    p.add_argument("--data", required=True, help="directory of part-*.parquet SFT shards (+ sft_meta.json)")
    p.add_argument("--output", required=True, help="model directory: exported weights, metrics.json, ray_train/ checkpoints")
    args, cfg = parse_config(p, argv)
    metrics = run_sft(cfg.sft, args.data, args.output, seed=cfg.run.seed, ray_cfg=cfg.ray)
    keys = ("num_examples", "num_quarantined", "num_steps", "final_loss", "mean_step_time_s", "mean_tokens_per_s",
            "padding_share_packed", "padding_share_unpacked", "wall_time_s")
    sys.stdout.write(json.dumps({k: metrics[k] for k in keys}) + "\n")
    return 0
