"""SFT checkpoints: what every rank writes, how a complete one is told from a cut one, and resuming from the newest.

A checkpoint directory (`<output>/ray_train/sft/checkpoint_N`) holds DeepSpeed's ZeRO shards under TAG,
rank 0's train state and one file list with byte sizes per rank; it is complete when every rank's list
arrived and every file it names has its full size.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from palign_ray.config import SFTConfig

TAG = "zero"  # DeepSpeed checkpoint tag inside every reported checkpoint directory
TRAIN_STATE = "train_state.json"  # rank 0 writes it next to the ZeRO shards
RUN_NAME = "sft"
RUN_SUBDIR = "ray_train"  # <output>/ray_train/sft/checkpoint_000004/...


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
    # Other ranks' lists are left out: written directly into a shared checkpoint dir they may still be growing.
    sizes = {
        str(p.relative_to(ckpt_dir)): p.stat().st_size
        for p in sorted(ckpt_dir.rglob("*"))
        if p.is_file() and not (p.parent == ckpt_dir and p.name.startswith("files_rank"))
    }
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


def checked_run_dir(output: Path, resume: bool) -> Path:
    """The checkpoints' run directory of `output`, checked against sft.resume (resuming needs one, a fresh run must not find one)."""
    run_dir = run_dir_of(output)
    if resume and not run_dir.is_dir():
        raise ValueError(f"sft.resume=true but {run_dir} does not exist: nothing to resume")
    if not resume and run_dir.exists():
        raise ValueError(
            f"{run_dir} holds an earlier run: pass sft.resume=true to continue it, or remove it"
        )
    return run_dir


def _checkpoints_direct(storage_path: str) -> bool:
    """Ranks write checkpoints straight into the run's storage when it is a filesystem path (local or
    shared, e.g. the cluster's /mnt/shared); a URI (s3://, gs://...) is remote: stage locally, Ray uploads."""
    return "://" not in storage_path


def save_and_report(
    engine: Any,
    cfg: SFTConfig,
    metrics: dict[str, Any],
    state: dict[str, Any],
    rank: int,
    run_dir: Path,
) -> None:
    """Every rank writes its ZeRO shard of one checkpoint, then all report it to Ray Train.

    Direct (filesystem storage): straight into <run_dir>/checkpoint_N, reported with NO_UPLOAD, so a
    checkpoint is written once instead of into /tmp and then copied (an 8B ZeRO-3 checkpoint with
    optimizer state is ~115 GB). Remote storage: a local temp dir per rank that Ray uploads and merges.
    """
    import ray.train

    name = f"checkpoint_{state['global_step']:06d}"
    if not _checkpoints_direct(str(run_dir)):
        _save_staged(engine, cfg, metrics, state, rank, name)
        return
    import torch.distributed as dist

    ckpt = run_dir / name
    if rank == 0 and ckpt.exists():
        # Left by an attempt that died while writing this step (a complete one would have been resumed from).
        shutil.rmtree(ckpt)
    dist.barrier()
    # LoRA: the frozen base weights are not checkpointed (the model reloads them from sft.model).
    engine.save_checkpoint(str(ckpt), tag=TAG, exclude_frozen_parameters=cfg.lora)
    if rank == 0:
        (ckpt / TRAIN_STATE).write_text(json.dumps(state))
    dist.barrier()  # every rank's files are whole before any rank lists their sizes
    write_file_sizes(ckpt, rank)
    ray.train.report(
        metrics,
        checkpoint=ray.train.Checkpoint(str(ckpt)),
        checkpoint_dir_name=name,
        checkpoint_upload_mode=ray.train.CheckpointUploadMode.NO_UPLOAD,
    )


def _save_staged(
    engine: Any,
    cfg: SFTConfig,
    metrics: dict[str, Any],
    state: dict[str, Any],
    rank: int,
    name: str,
) -> None:
    import ray.train

    tmp = tempfile.mkdtemp(prefix="palign-sft-ckpt-")
    try:
        engine.save_checkpoint(tmp, tag=TAG, exclude_frozen_parameters=cfg.lora)
        if rank == 0:
            Path(tmp, TRAIN_STATE).write_text(json.dumps(state))
        write_file_sizes(Path(tmp), rank)
        ray.train.report(
            metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=name
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def restore_checkpoint(
    engine: Any, cfg: SFTConfig, geometry: dict[str, Any], run_dir: Path
) -> dict[str, Any] | None:
    """Load the newest checkpoint of this run: after a worker failure (FailureConfig) or `sft.resume=true`.

    Ray's get_checkpoint() alone is not enough: the controller registers a reported checkpoint
    only when it next polls the workers, so a worker that dies within that interval after a report
    restarts the run from an older checkpoint (seen here: from scratch), and the run snapshot that
    a new run reads is written asynchronously. The scan of the run directory finds it regardless.
    """
    import ray.train

    on_disk = latest_complete_checkpoint(run_dir)
    candidates = [
        c for c in (ray.train.get_checkpoint(), on_disk and ray.train.Checkpoint(str(on_disk))) if c
    ]
    if not candidates:
        return None
    ckpt = max(candidates, key=lambda c: checkpoint_step(Path(c.path)))
    with ckpt.as_directory() as d:
        state = json.loads(Path(d, TRAIN_STATE).read_text())
        if state["geometry"] != geometry:
            raise ValueError(
                f"checkpoint {ckpt.path} was written with {state['geometry']}, this run has {geometry}; "
                "the data plan would change (resume with the same shards, sft.* batch settings and workers)"
            )
        engine.load_checkpoint(d, tag=TAG, load_module_strict=not cfg.lora)
    state["restarts"] = state.get("restarts", []) + [state["global_step"]]
    return state


def consolidated_state_dict(ckpt_dir: Path, lora: bool) -> dict[str, Any]:
    """ZeRO-2/3 shards of a checkpoint → one fp32 state dict (DeepSpeed's zero_to_fp32).

    For inspecting small checkpoints (tests): it holds the whole model in fp32. The export does not use it.
    """
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(
        str(ckpt_dir), tag=TAG, exclude_frozen_parameters=lora
    )
