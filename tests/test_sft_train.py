"""Real Ray Train + DeepSpeed ZeRO runs on the tiny model: training, checkpoints, resume, failures, LoRA, export."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from test_sft_curves import curves
from test_sft_data import build_shards

from palign_ray.config import RayConfig, SFTConfig
from palign_ray.sft.train import FailureInjection, run_sft

pytestmark = pytest.mark.timeout(600)

RAY = RayConfig(num_cpus=4)


@pytest.fixture(scope="module")
def shards(tmp_path_factory, tokenizer):
    return build_shards(tmp_path_factory.mktemp("sft") / "shards", tokenizer)


@pytest.fixture(scope="module")
def base_cfg(tiny_model) -> SFTConfig:
    # 8 examples of ~45 tokens, about 2 per 128-token sequence → 4 sequences → 2 steps per epoch.
    return SFTConfig(
        model=tiny_model,
        precision="fp32",
        num_workers=2,
        cpus_per_worker=1.0,
        micro_batch_size=1,
        epochs=3,
        learning_rate=3e-3,
        warmup_ratio=0.2,
        max_seq_len=128,
        checkpoint_every=2,
        max_failures=0,
    )


@pytest.fixture(scope="module")
def ref_run(ray_session, shards, base_cfg, tmp_path_factory):
    """The uninterrupted ZeRO-2 run every other run is compared against."""
    out = tmp_path_factory.mktemp("ref") / "model"
    return out, run_sft(base_cfg, shards, out, seed=0, ray_cfg=RAY)


def _weights(model_dir) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(model_dir) / "model.safetensors"))


def _epoch_losses(history: list[dict]) -> list[float]:
    by_epoch: dict[int, list[float]] = {}
    for h in history:
        by_epoch.setdefault(h["epoch"], []).append(h["loss"])
    return [sum(v) / len(v) for _, v in sorted(by_epoch.items())]


def _check_trained(out: Path, metrics: dict, tiny_model: str, steps: int) -> None:
    assert [h["step"] for h in metrics["history"]] == list(range(1, steps + 1))
    losses = _epoch_losses(metrics["history"])
    assert losses[-1] < losses[0] - 0.1, (
        losses
    )  # same examples every epoch: the training loss falls
    before, after = _weights(tiny_model), _weights(out)
    assert set(before) == set(after)
    changed = [k for k in before if not (before[k] == after[k]).all()]
    assert len(changed) > len(before) // 2, changed
    assert json.loads((out / "metrics.json").read_text())["num_steps"] == steps


@pytest.mark.timeout(600)
def test_zero2_trains_checkpoints_exports_and_vllm_generates(ref_run, tiny_model, shards):
    out, metrics = ref_run
    _check_trained(out, metrics, tiny_model, steps=6)
    assert (
        metrics["num_rows"] == 8
        and metrics["num_examples"] == 8
        and metrics["num_quarantined"] == 0
    )
    assert metrics["restarts"] == []
    # micro_batch_size=1: a micro-batch is one sequence, so neither layout pads; packing halves the sequences.
    assert metrics["padding_share_packed"] == metrics["padding_share_unpacked"] == 0.0
    assert metrics["num_sequences_packed"] < metrics["num_sequences_unpacked"] == 8
    assert all(
        h["tokens_per_s"] > 0 and h["step_time_s"] > 0 and h["lr"] > 0 for h in metrics["history"]
    )
    # Both ranks wrote their ZeRO shards straight into one checkpoint directory; 2 kept (keep_checkpoints=2).
    ckpts = sorted((out / "ray_train" / "sft").glob("checkpoint_0*"))
    assert [c.name for c in ckpts] == ["checkpoint_000004", "checkpoint_000006"]
    names = {p.name for p in (ckpts[-1] / "zero").iterdir()}
    assert {
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    } <= names
    # Written in place, not staged per rank and copied: each rank listed the other's shard as well.
    listed = json.loads((ckpts[-1] / "files_rank1.json").read_text())
    assert "zero/zero_pp_rank_0_mp_rank_00_optim_states.pt" in listed
    assert (out / "chat_template.jinja").is_file() or "chat_template" in (
        out / "tokenizer_config.json"
    ).read_text()
    # The export ran on rank 0 (not the driver) and reports its host memory; both ranks report their load.
    mem = metrics["memory"]
    assert len(mem["load_peak_rss_mb"]) == 2 and all(m > 0 for m in mem["load_peak_rss_mb"])
    assert (
        mem["export"]["files"] == ["model.safetensors"] and mem["export"]["peak_increase_mb"] >= 0
    )
    # Training curves: one point per step, the same numbers as metrics.json's history.
    tb = curves(out.parent / "tensorboard")
    assert set(tb) >= {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s"}
    assert tb["train/loss"] == pytest.approx(
        {h["step"]: h["loss"] for h in metrics["history"]}, rel=1e-6
    )
    assert tb["train/lr"] == pytest.approx(
        {h["step"]: h["lr"] for h in metrics["history"]}, rel=1e-6
    )

    from palign_ray.chat import chat_ids, user_turn
    from palign_ray.config import EngineConfig, resolve_engine_defaults
    from palign_ray.engines.base import SamplingSpec
    from palign_ray.engines.vllm_engine import VLLMEngine

    ecfg = EngineConfig(max_model_len=512, max_num_seqs=4, enable_prefix_caching=False)
    engine = VLLMEngine(str(out), resolve_engine_defaults(ecfg, on_cuda=False))
    try:
        prompt = chat_ids(engine.tokenizer, user_turn("What is 2 + 3?"))
        [res] = engine.generate([prompt], SamplingSpec(max_tokens=8, temperature=0.0))
        assert res.num_prompt_tokens == len(prompt) and len(res.completions[0].token_ids) > 0
    finally:
        engine.shutdown()


@pytest.mark.timeout(600)
def test_stopped_run_resumes_at_its_last_checkpoint(ref_run, shards, base_cfg, tmp_path):
    from ray.train import TrainingFailedError

    out = tmp_path / "model"
    marker = tmp_path / "killed"
    # The run dies after step 3 (last checkpoint: step 2) and, with max_failures=0, stays dead.
    with pytest.raises(TrainingFailedError):
        run_sft(base_cfg, shards, out, ray_cfg=RAY, inject_failure=FailureInjection(3, str(marker)))
    assert marker.is_file() and not (out / "model.safetensors").exists()
    with pytest.raises(ValueError, match="sft.resume=true"):
        run_sft(base_cfg, shards, out, ray_cfg=RAY)
    metrics = run_sft(dataclasses.replace(base_cfg, resume=True), shards, out, ray_cfg=RAY)
    assert metrics["restarts"] == [2]
    ref = ref_run[1]["history"]
    assert [h["step"] for h in metrics["history"]] == [h["step"] for h in ref]
    # Same data position and exact optimizer/scheduler state: the same per-step losses and lrs.
    for got, want in zip(metrics["history"], ref, strict=True):
        assert got["epoch"] == want["epoch"] and got["num_tokens"] == want["num_tokens"]
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5, abs=1e-5)
        assert got["lr"] == pytest.approx(want["lr"], rel=1e-9)
    with pytest.raises(ValueError, match="nothing to resume"):
        run_sft(dataclasses.replace(base_cfg, resume=True), shards, tmp_path / "other", ray_cfg=RAY)
    # The killed attempt logged steps 1-3, the resumed one 3-6 (purging its step 3): one clean curve.
    tb = curves(tmp_path / "tensorboard")["train/loss"]
    assert tb == pytest.approx({h["step"]: h["loss"] for h in metrics["history"]}, rel=1e-6)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_killed_worker_is_recovered_by_failure_config(ref_run, shards, base_cfg, tmp_path):
    marker = tmp_path / "killed"
    cfg = dataclasses.replace(base_cfg, max_failures=1)
    metrics = run_sft(
        cfg,
        shards,
        tmp_path / "model",
        ray_cfg=RAY,
        inject_failure=FailureInjection(3, str(marker)),
    )
    assert marker.is_file()  # a worker really died
    assert metrics["restarts"] == [2] and metrics["num_steps"] == 6
    for got, want in zip(metrics["history"], ref_run[1]["history"], strict=True):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5, abs=1e-5)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_zero3_bf16_trains_and_exports(ray_session, shards, base_cfg, tiny_model, tmp_path):
    cfg = dataclasses.replace(base_cfg, zero_stage=3, precision="bf16", gradient_checkpointing=True)
    out = tmp_path / "model"
    metrics = run_sft(cfg, shards, out, ray_cfg=RAY)
    _check_trained(out, metrics, tiny_model, steps=6)
    ckpt = sorted((out / "ray_train" / "sft").glob("checkpoint_0*"))[-1]
    names = {p.name for p in (ckpt / "zero").iterdir()}
    # ZeRO-3 partitions the parameters themselves: one model-state shard per rank.
    assert {
        "zero_pp_rank_0_mp_rank_00_model_states.pt",
        "zero_pp_rank_1_mp_rank_00_model_states.pt",
    } <= names


@pytest.mark.slow  # ~60 s: one more Ray Train run; the non-slow set keeps ZeRO-2 + resume
@pytest.mark.timeout(600)
def test_lora_trains_only_adapters_and_exports_merged(
    ray_session, shards, base_cfg, tiny_model, tmp_path
):
    from palign_ray.sft.checkpoints import TRAIN_STATE, consolidated_state_dict

    cfg = dataclasses.replace(
        base_cfg, lora=True, lora_r=8, lora_alpha=16, learning_rate=2e-2, epochs=2
    )
    out = tmp_path / "model"
    metrics = run_sft(cfg, shards, out, ray_cfg=RAY)
    assert metrics["num_steps"] == 4
    ckpt = sorted((out / "ray_train" / "sft").glob("checkpoint_0*"))[-1]
    assert (ckpt / TRAIN_STATE).is_file()
    trained = consolidated_state_dict(ckpt, lora=True)
    assert trained and all("lora_" in k for k in trained), list(trained)[
        :5
    ]  # only adapters were optimized
    before, after = _weights(tiny_model), _weights(out)
    assert set(after) == set(before)  # merged: plain HF keys, no peft/lora keys
    for k in before:
        same = bool((before[k] == after[k]).all())
        targeted = any(m in k for m in cfg.lora_target_modules)
        assert same != targeted, k  # adapters merged into exactly the targeted projections


def test_latest_complete_checkpoint_skips_partial_uploads(tmp_path):
    import shutil

    from palign_ray.sft.checkpoints import (
        TAG,
        TRAIN_STATE,
        latest_complete_checkpoint,
        write_file_sizes,
    )

    def ckpt(step: int, world: int = 2) -> Path:
        """Each rank writes its shard and file list in its own dir; Ray merges the dirs (as save_and_report does)."""
        d = tmp_path / f"checkpoint_{step:06d}"
        for r in range(world):
            rank_dir = tmp_path / f"rank{r}-{step}"
            (rank_dir / TAG).mkdir(parents=True)
            (rank_dir / "latest").write_text(TAG)
            (rank_dir / TAG / f"bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt").write_bytes(
                b"x" * (1000 + r)
            )
            if r == 0:
                (rank_dir / TRAIN_STATE).write_text(
                    json.dumps({"global_step": step, "geometry": {"world_size": world}})
                )
            write_file_sizes(rank_dir, r)
            shutil.copytree(rank_dir, d, dirs_exist_ok=True)
        return d

    assert latest_complete_checkpoint(tmp_path) is None
    ckpt(2)
    ckpt(4)
    (ckpt(6) / "files_rank1.json").unlink()  # rank 1's upload never arrived
    cut = ckpt(8) / TAG / "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"
    cut.write_bytes(
        cut.read_bytes()[:500]
    )  # the driver died mid-copy: the shard exists but is short
    torn = ckpt(10) / "files_rank0.json"
    torn.write_text(torn.read_text()[:7])  # the list itself was cut
    (tmp_path / "checkpoint_000012").mkdir()  # no train state at all
    assert latest_complete_checkpoint(tmp_path).name == "checkpoint_000004"
    ckpt(14)
    assert latest_complete_checkpoint(tmp_path).name == "checkpoint_000014"


def test_ranks_writing_one_shared_checkpoint_dir_list_whole_files_only(tmp_path):
    """Direct checkpoints: every rank lists the dir after a barrier; the other ranks' lists (which may still
    be growing) are never listed, so a finished checkpoint is complete by the same rule as a staged one."""
    from palign_ray.sft.checkpoints import (
        TAG,
        TRAIN_STATE,
        _checkpoints_direct,
        checkpoint_is_complete,
        write_file_sizes,
    )

    d = tmp_path / "checkpoint_000002"
    (d / TAG).mkdir(parents=True)
    for r in range(2):
        (d / TAG / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt").write_bytes(b"x" * (100 + r))
    (d / TRAIN_STATE).write_text(json.dumps({"global_step": 2, "geometry": {"world_size": 2}}))
    write_file_sizes(d, 0)
    write_file_sizes(d, 1)
    assert "files_rank0.json" not in json.loads((d / "files_rank1.json").read_text())
    assert json.loads((d / "files_rank0.json").read_text()) == json.loads(
        (d / "files_rank1.json").read_text()
    )
    assert checkpoint_is_complete(d)
    assert _checkpoints_direct("/mnt/shared/palign/runs/x/train/model/ray_train")
    assert not _checkpoints_direct("s3://bucket/runs/x")  # remote storage: staged, Ray uploads
