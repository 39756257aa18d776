"""Student SFT under Ray Train (TorchTrainer) + DeepSpeed ZeRO: the training loop, resume, HF export.

Checkpoints (writing, completeness, restoring) are in `palign_ray.sft.checkpoints`.

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
from collections import Counter
from pathlib import Path
from typing import Any

from palign_ray import records as R
from palign_ray.artifacts import write_json, write_parquet
from palign_ray.config import RayConfig, SFTConfig
from palign_ray.hardware import cpu_bf16_native
from palign_ray.sft import core
from palign_ray.sft import data as D
from palign_ray.sft.checkpoints import (
    RUN_NAME,
    TRAIN_STATE,
    checked_run_dir,
    latest_complete_checkpoint,
    restore_checkpoint,
    save_and_report,
)
from palign_ray.sft.deepspeed_config import resolve_precision

log = logging.getLogger(__name__)

EXPORT_INFO = "export.json"  # rank 0's export numbers, beside the checkpoints


@dataclasses.dataclass(frozen=True)
class FailureInjection:
    """Test hook: the last rank exits hard after optimizer step `step` while `marker` does not exist."""

    step: int
    marker: str


# ---------------------------------------------------------------- per-worker helpers


def _epoch_plans(plan: Any, epochs: int, total_steps: int) -> list[D.EpochPlan]:
    """`epochs` epoch plans, or with total_steps > 0 as many (each reshuffled) as reach total_steps."""
    if total_steps <= 0:
        return [plan(ep) for ep in range(epochs)]
    plans: list[D.EpochPlan] = []
    while sum(len(p.steps) for p in plans) < total_steps:
        plans.append(plan(len(plans)))
        if not plans[-1].steps:
            raise ValueError(
                "an epoch plan has no optimizer step: sft.total_steps cannot be reached"
            )
    return plans


def _step_cap(cfg: SFTConfig) -> int:
    """The most steps a run takes: the smaller of total_steps and max_steps where set, 0 = no cap."""
    caps = [n for n in (cfg.total_steps, cfg.max_steps) if n > 0]
    return min(caps) if caps else 0


def _schedule(plans: list[D.EpochPlan], max_steps: int) -> list[tuple[int, int]]:
    """(epoch, step in epoch) for every optimizer step of the run."""
    sched = [(p.epoch, s) for p in plans for s in range(len(p.steps))]
    return sched[:max_steps] if max_steps > 0 else sched


def _check_failure_injection(
    inject: FailureInjection | None, step: int, rank: int, world: int
) -> None:
    if (
        inject is not None
        and step == inject.step
        and rank == world - 1
        and not os.path.exists(inject.marker)
    ):
        Path(inject.marker).write_text(f"killed rank {rank} after step {step}\n")
        log.warning("failure injection: rank %d exits after step %d", rank, step)
        os._exit(1)


def _plan(
    config: dict[str, Any], rows: list[dict[str, Any]], world: int
) -> tuple[list[D.Example], list[D.EpochPlan], list[tuple[int, int]], dict[str, Any]]:
    """Examples, per-epoch plans, the step schedule and the run's geometry (what a resume must match)."""
    cfg: SFTConfig = config["sft"]
    examples, _ = D.validate_rows(rows, cfg.max_seq_len)
    if not examples:
        raise ValueError(f"no trainable examples in {len(rows)} shard rows (see quarantine)")
    lengths = [e.num_tokens for e in examples]

    def plan(ep: int) -> D.EpochPlan:
        return D.plan_epoch(
            lengths,
            config["seed"],
            ep,
            cfg.max_seq_len,
            cfg.packing,
            world,
            cfg.micro_batch_size,
            cfg.grad_accum_steps,
        )

    plans = _epoch_plans(plan, cfg.epochs, cfg.total_steps)
    schedule = _schedule(plans, _step_cap(cfg))
    geometry = {
        "fingerprint": D.fingerprint(examples),
        "world_size": world,
        "seed": config["seed"],
        "micro_batch_size": cfg.micro_batch_size,
        "grad_accum_steps": cfg.grad_accum_steps,
        "packing": cfg.packing,
        "max_seq_len": cfg.max_seq_len,
        "epochs": len(plans),
        "total_steps": len(schedule),
    }
    return examples, plans, schedule, geometry


def _per_rank(value: dict[str, float]) -> dict[str, list[float]]:
    """Every rank's numbers, rank order: {"load_peak_rss_mb": [r0, r1, ...], ...}."""
    import torch.distributed as dist

    got: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(got, value)
    return {k: [g[k] for g in got] for k in value}


def setup_peaks(memory: dict[str, list[float]], what: str) -> list[float]:
    """Per rank, the larger of the load and deepspeed.initialize peaks (`what`: peak_rss_mb or anon_peak_mb)."""
    return [max(a, b) for a, b in zip(memory[f"load_{what}"], memory[f"init_{what}"], strict=True)]


def _resolved_precision(cfg: SFTConfig, on_gpu: bool, device: Any, rank: int) -> SFTConfig:
    """`cfg` with sft.precision resolved on the ranks themselves (their CPUs, not the driver's), all agreeing."""
    import torch
    import torch.distributed as dist

    native = torch.tensor([int(on_gpu or cpu_bf16_native())], device=device)
    dist.all_reduce(native, op=dist.ReduceOp.MIN)  # one rank without native bf16 sets fp32 for all
    precision = resolve_precision(cfg.precision, on_gpu, bool(native.item()))
    if rank == 0 and precision == "bf16" and not native.item():
        log.warning(
            "sft.precision=bf16 on a CPU without native bf16 kernels: steps run many times slower "
            "than fp32 (sft.precision=auto picks fp32 here)"
        )
    return dataclasses.replace(cfg, precision=precision)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: data plan → deepspeed.initialize → steps → checkpoints → the HF export."""
    import deepspeed
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from palign_ray.sft.curves import TrainCurves

    cfg: SFTConfig = config["sft"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    on_gpu = cfg.use_gpu
    device = ray.train.torch.get_device() if on_gpu else torch.device("cpu")
    if not on_gpu:
        core.skip_shm_op_build()
    # Ray Train already created the process group (gloo on CPU, nccl on GPU); DeepSpeed reuses it.
    deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo", auto_mpi_discovery=False)
    cfg = _resolved_precision(cfg, on_gpu, device, rank)

    t_setup = time.perf_counter()
    # Every rank reads the whole (small) shard set and derives the same deterministic plan.
    rows = list(ray.train.get_dataset_shard("train").iter_rows())
    t_read = time.perf_counter()
    examples, plans, schedule, geometry = _plan(config, rows, world)
    geometry["precision"] = cfg.precision  # resolved: a bf16 checkpoint does not resume as fp32
    total = len(schedule)
    engine, load_mem = core.build_engine(cfg, config["model_path"], world, on_gpu, total)
    run_dir = Path(config["run_dir"])
    state = restore_checkpoint(engine, cfg, geometry, run_dir) or {
        "global_step": 0,
        "history": [],
        "geometry": geometry,
    }
    state["memory"] = _per_rank(load_mem)
    start = state["global_step"]
    if rank == 0:
        log.info(
            "sft: %d examples, %d steps (start at %d), world %d, ZeRO-%d, %s; setup %.1f s (data read %.1f s), "
            "setup peak per rank: RSS %s MiB, anonymous %s MiB",
            len(examples),
            total,
            start,
            world,
            cfg.zero_stage,
            cfg.precision,
            time.perf_counter() - t_setup,
            t_read - t_setup,
            setup_peaks(state["memory"], "peak_rss_mb"),
            setup_peaks(state["memory"], "anon_peak_mb"),
        )
    from tqdm import tqdm

    bar = tqdm(total=total, initial=start, desc="sft", disable=rank != 0, mininterval=2.0)
    curves = TrainCurves(
        config["tensorboard_dir"] if rank == 0 and cfg.tensorboard else None, first_step=start + 1
    )
    every = cfg.checkpoint_every or total
    for gstep in range(start, total):
        epoch, s = schedule[gstep]
        plan_step = plans[epoch].steps[s]
        denom = max(1, D.step_loss_tokens(plan_step, examples))
        lr = engine.get_lr()[0]
        t0 = time.perf_counter()
        loss_sum, n_tok, n_pad = core.run_step(
            engine,
            plan_step,
            examples,
            rank=rank,
            world=world,
            grad_accum_steps=cfg.grad_accum_steps,
            pad_id=config["pad_id"],
            device=device,
            # ZeRO-3 gathers the head's weight at each call, a collective: ranks with different
            # sequence lengths would call it a different number of times and hang
            loss_chunk_tokens=cfg.loss_chunk_tokens if cfg.zero_stage < 3 else 0,
        )
        totals = torch.tensor(
            [loss_sum, n_tok, n_pad], dtype=torch.float64, device=device
        )  # nccl: on the GPU
        dist.all_reduce(totals)
        dt = time.perf_counter() - t0
        grad_norm = engine.get_global_grad_norm()
        rec = {
            "step": gstep + 1,
            "epoch": epoch,
            "loss": totals[0].item() / denom,
            "lr": lr,
            "grad_norm": float(grad_norm) if grad_norm is not None else math.nan,
            "step_time_s": round(dt, 4),
            "tokens_per_s": round(totals[1].item() / dt, 1),
            "num_tokens": int(totals[1].item()),
            "num_pad_tokens": int(totals[2].item()),
        }
        state["history"].append(rec)
        state["global_step"] = gstep + 1
        curves.log(rec)
        if rank == 0:
            log.info(
                "step %d/%d loss %.4f lr %.3g %.1f tok/s %.2f s",
                gstep + 1,
                total,
                rec["loss"],
                lr,
                rec["tokens_per_s"],
                dt,
            )
            bar.update(1)
        _check_failure_injection(config.get("inject_failure"), gstep + 1, rank, world)
        if (gstep + 1) % every == 0 or gstep + 1 == total:
            save_and_report(engine, cfg, rec, state, rank, run_dir)
    bar.close()
    curves.close()
    # The model is assembled here, on the ranks that hold it, never on the driver. Its numbers go to a
    # file: Ray Train's Result carries only the metrics reported with the last checkpoint.
    exported = export_from_engine(
        engine, cfg, config["model_path"], Path(config["output"]), config["chat_template"], rank
    )
    if rank == 0:
        write_json(run_dir / EXPORT_INFO, exported)


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


def _ray_cfg_for(cfg: SFTConfig, ray_cfg: RayConfig) -> RayConfig:
    # Train workers take whole logical CPUs; Ray Data's read tasks need one more or they starve.
    need = math.ceil(cfg.num_workers * cfg.cpus_per_worker) + 1
    return dataclasses.replace(
        ray_cfg, num_cpus=max(ray_cfg.num_cpus or os.cpu_count() or 2, need), num_actors=0
    )


def run_sft(
    cfg: SFTConfig,
    data_dir: str | Path,
    output_dir: str | Path,
    *,
    seed: int = 0,
    ray_cfg: RayConfig | None = None,
    inject_failure: FailureInjection | None = None,
) -> dict[str, Any]:
    """Train on the shards in `data_dir`, export the HF model into `output_dir`; returns metrics.json's content."""
    import ray.data
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from palign_ray.models import resolve_model
    from palign_ray.ray_env import init_ray

    output = Path(output_dir).resolve()
    files = D.shard_files(data_dir)
    _check_shards(files)
    run_dir = checked_run_dir(output, cfg.resume)
    if cfg.resume:
        found = latest_complete_checkpoint(run_dir)
        log.info(
            "sft: resuming %s from %s", run_dir, found or "the start (no complete checkpoint yet)"
        )
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
        train_loop_config={
            "sft": cfg,
            "seed": seed,
            "model_path": model_path,
            "pad_id": pad_id,
            "run_dir": str(run_dir),
            "inject_failure": inject_failure,
            "output": str(output),
            "chat_template": meta.get("chat_template"),
            "tensorboard_dir": str(tensorboard_dir_of(output)),
        },
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=RUN_NAME,
            storage_path=str(run_dir.parent),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
        ),
        # Materialized once on the driver: workers (and restarted workers) then only fetch blocks
        # instead of each running its own read pipeline (measured: 10.5 s → 1.0 s per worker start).
        datasets={
            "train": ray.data.read_parquet(files, columns=list(D.SHARD_COLUMNS)).materialize()
        },
        # Not split: every rank reads all rows and takes its part of one deterministic plan, which is
        # what lets a restart skip exactly the examples already trained on.
        dataset_config=DataConfig(datasets_to_split=[]),
    )
    try:
        trainer.fit()  # raises TrainingFailedError when the workers failed for good
    finally:
        data_ctx.enable_progress_bars = bars
    train_s = time.perf_counter() - t0
    state = _final_state(run_dir, output)
    metrics, bad = _summary(cfg, files, state, train_s, seed)
    metrics["memory"] = {
        **state.get("memory", {}),
        "export": json.loads((run_dir / EXPORT_INFO).read_text()),
    }
    log.info(
        "sft: Ray Train run (training + export on the workers) %.1f s; host memory %s",
        train_s,
        metrics["memory"],
    )
    if bad:  # rows in = examples trained on + quarantined (with a reason each)
        write_parquet(output / "quarantine" / "part-sft.parquet", bad)
    write_json(output / "metrics.json", metrics)
    return metrics


def tensorboard_dir_of(output: str | Path) -> Path:
    """TensorBoard event files of the run exported to `output`: beside it (<run_dir>/train/tensorboard)."""
    return Path(output).resolve().parent / "tensorboard"


def _final_state(run_dir: Path, output: Path) -> dict[str, Any]:
    """The train state of the run's last checkpoint, checked to be the end of training with its export in place."""
    last = latest_complete_checkpoint(run_dir)
    if last is None:
        raise RuntimeError(f"Ray Train finished but {run_dir} holds no complete checkpoint")
    state = json.loads((last / TRAIN_STATE).read_text())
    if state["global_step"] != state["geometry"]["total_steps"]:
        raise RuntimeError(
            f"the last complete checkpoint {last} is at step {state['global_step']} of "
            f"{state['geometry']['total_steps']}: training did not finish"
        )
    if not (run_dir / EXPORT_INFO).is_file() or not list(output.glob("model*.safetensors")):
        raise RuntimeError(f"training finished but the workers' export to {output} is missing")
    return state


def _pad_id(model_path: str) -> int:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if pad is None:
        raise ValueError(f"tokenizer of {model_path} has neither a pad nor an eos token")
    return int(pad)


def _summary(
    cfg: SFTConfig, files: list[str], state: dict[str, Any], train_s: float, seed: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """metrics.json: per-step history from the final checkpoint, throughput, padding share, row accounting."""
    examples, bad = D.validate_rows(_read_all_rows(files), cfg.max_seq_len)
    hist = state["history"]
    timed = hist[1:] or hist  # the first step includes warm-up allocations
    metrics = {
        "num_rows": len(examples) + len(bad),
        "num_examples": len(examples),
        "num_quarantined": len(bad),
        "quarantine_reasons": _count(b[R.REASON] for b in bad),
        "num_steps": state["global_step"],
        "restarts": state.get("restarts", []),
        "final_loss": hist[-1]["loss"] if hist else None,
        "mean_step_time_s": round(sum(h["step_time_s"] for h in timed) / max(1, len(timed)), 4),
        "mean_tokens_per_s": round(sum(h["tokens_per_s"] for h in timed) / max(1, len(timed)), 1),
        "wall_time_s": round(train_s, 1),
        **D.padding_report(
            [e.num_tokens for e in examples], seed, cfg.max_seq_len, cfg.micro_batch_size
        ),
        "geometry": state["geometry"],
        "history": hist,
    }
    return metrics, bad


def _count(items: Any) -> dict[str, int]:
    return dict(Counter(items))


# ---------------------------------------------------------------- export


def export_from_engine(
    engine: Any,
    cfg: SFTConfig,
    model_path: str,
    out_dir: Path,
    chat_template: str | None,
    rank: int,
) -> dict[str, Any]:
    """HF safetensors (LoRA merged) + config + tokenizer in `out_dir`, written by rank 0, vLLM-loadable.

    Every rank calls it (ZeRO-3 gathers each tensor collectively); rank 0 streams the tensors into a
    temp dir inside `out_dir` and moves the files in when all are written. Returns rank 0's numbers:
    files, bytes, seconds and the host memory the export added (peak RSS over the RSS before it).
    """
    import torch
    import torch.distributed as dist

    from palign_ray.sft import export as X
    from palign_ray.sft.memory import MIB, peak_rss_during

    dtype = torch.bfloat16 if cfg.export_dtype == "bf16" else torch.float32
    writer = rank == 0
    tmp = out_dir
    if writer:
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in out_dir.glob(".tmp-export-*"):  # an export killed midway
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=".tmp-export-"))
    t0 = time.perf_counter()
    with peak_rss_during() as mem:
        layout = X.write_hf_weights(
            engine.module,
            tmp,
            export_dtype=dtype,
            max_shard_bytes=cfg.export_shard_mb * MIB,
            writer=writer,
        )
    info: dict[str, Any] = {}
    if writer:
        X.write_hf_config(engine.module, tmp, dtype)
        _save_tokenizer(model_path, chat_template, tmp)
        _replace_model_files(tmp, out_dir)
        info = {
            **layout,
            "dtype": cfg.export_dtype,
            "seconds": round(time.perf_counter() - t0, 2),
            "rss_before_mb": round(mem["rss_before"] / MIB, 1),
            "peak_rss_mb": round(mem["peak"] / MIB, 1),
            "peak_increase_mb": round(mem["peak_increase"] / MIB, 1),
        }
        log.info("exported %s model to %s: %s", cfg.export_dtype, out_dir, info)
    dist.barrier()  # the files are in place before any rank reports the run finished
    return info


def _save_tokenizer(model_path: str, chat_template: str | None, out_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    if chat_template:  # the template the shards were rendered with
        tok.chat_template = chat_template
    tok.save_pretrained(out_dir)


def _replace_model_files(tmp: Path, out_dir: Path) -> None:
    """Move the new files in; weight files of an earlier export with another shard layout go first."""
    for old in list(out_dir.glob("model*.safetensors")) + list(
        out_dir.glob("model.safetensors.index.json")
    ):
        if not (tmp / old.name).exists():
            old.unlink()
    for f in tmp.iterdir():
        os.replace(f, out_dir / f.name)
    shutil.rmtree(tmp, ignore_errors=True)
