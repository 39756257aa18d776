"""SFT: Ray Train + DeepSpeed ZeRO-2/3 vs a plain single-process PyTorch loop; padding share with/without packing."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from palign_ray.config import Config

log = logging.getLogger(__name__)


def gsm8k_rows(data_dir: str | Path, num: int) -> list[dict[str, Any]]:
    """full_cot rows from GSM8K test: the worked solution is the trace, the '#### N' number the answer."""
    import json

    rows = []
    for n, line in enumerate(
        (Path(data_dir) / "gsm8k" / "gsm8k_test.jsonl").read_text().splitlines()[:num]
    ):
        r = json.loads(line)
        cot, _, ans = r["answer"].rpartition("####")
        rows.append(
            {
                "problem_id": f"gsm8k-{n:04d}",
                "question": r["question"],
                "cot": cot.strip(),
                "answer": ans.strip(),
            }
        )
    return rows


def padding(
    lengths: list[int], seed: int, max_seq_len: int, micro_batches: tuple[int, ...]
) -> dict[str, Any]:
    from palign_ray.sft.data import padding_report

    return {
        f"micro_batch_{mb}": padding_report(lengths, seed, max_seq_len, mb) for mb in micro_batches
    }


def plain_loop(shards: str, cfg: Config, steps: int, threads: int) -> dict[str, Any]:
    """One process with `threads` torch threads, the same model/data plan/micro-batch/loss as a Ray Train rank (world 1)."""
    import pyarrow.parquet as pq
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from bench.common import load_avg
    from palign_ray.models import resolve_model
    from palign_ray.sft import data as D

    sc = cfg.sft
    load_before = load_avg()
    torch.set_num_threads(threads)
    rows = [
        r
        for f in D.shard_files(shards)
        for r in pq.read_table(f, columns=list(D.SHARD_COLUMNS)).to_pylist()
    ]
    examples, _ = D.validate_rows(rows, sc.max_seq_len)
    plan = D.plan_epoch(
        [e.num_tokens for e in examples],
        cfg.run.seed,
        0,
        sc.max_seq_len,
        sc.packing,
        1,
        sc.micro_batch_size,
        sc.grad_accum_steps,
    )
    model = AutoModelForCausalLM.from_pretrained(resolve_model(sc.model), dtype=torch.float32)
    model.config.use_cache = False
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=sc.learning_rate)
    autocast = sc.precision == "bf16"
    times, toks, losses = [], [], []
    for plan_step in plan.steps[:steps]:
        t0 = time.perf_counter()
        n_tok = 0
        denom = max(1, D.step_loss_tokens(plan_step, examples))
        for micro in plan_step:
            b = D.collate(micro[0], examples, 0)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                logits = model(
                    input_ids=torch.tensor(b["input_ids"]),
                    position_ids=torch.tensor(b["position_ids"]),
                    use_cache=False,
                ).logits
            labels = torch.tensor(b["labels"])
            loss = (
                F.cross_entropy(
                    logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                    labels[:, 1:].reshape(-1),
                    ignore_index=D.IGNORE_INDEX,
                    reduction="sum",
                )
                / denom
            )
            loss.backward()
            n_tok += b["num_tokens"]
        torch.nn.utils.clip_grad_norm_(model.parameters(), sc.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        toks.append(n_tok)
        losses.append(float(loss.item()))
    timed = list(zip(times, toks, strict=True))[1:] or list(
        zip(times, toks, strict=True)
    )  # step 1 = warm-up
    return {
        "num_steps": len(times),
        "step_time_s": [round(t, 3) for t in times],
        "median_step_time_s": round(statistics.median(t for t, _ in timed), 4),
        "tokens_per_s": round(sum(n for _, n in timed) / sum(t for t, _ in timed), 1),
        "tokens_per_step": toks,
        "losses": [round(x, 4) for x in losses],
        "threads": torch.get_num_threads(),
        "load_avg_before": load_before,
        "load_avg_after": load_avg(),
        "precision": sc.precision + (" (autocast)" if autocast else ""),
    }


def ray_run(
    shards: str, cfg: Config, zero_stage: int, steps: int, out_root: Path
) -> dict[str, Any]:
    import ray

    from bench.common import load_avg
    from palign_ray.sft.train import run_sft, setup_peaks

    load_before = load_avg()
    sc = dataclasses.replace(cfg.sft, zero_stage=zero_stage, max_steps=steps, checkpoint_every=0)
    out = out_root / f"zero{zero_stage}"
    t0 = time.perf_counter()
    try:
        m = run_sft(sc, shards, out, seed=cfg.run.seed, ray_cfg=cfg.ray)
    finally:
        ray.shutdown()
    wall = time.perf_counter() - t0
    hist = m["history"]
    timed = hist[1:] or hist
    return {
        "zero_stage": zero_stage,
        "num_workers": sc.num_workers,
        "cpus_per_worker": sc.cpus_per_worker,
        "num_steps": m["num_steps"],
        "step_time_s": [h["step_time_s"] for h in hist],
        "median_step_time_s": round(statistics.median(h["step_time_s"] for h in timed), 4),
        "tokens_per_s": round(
            sum(h["num_tokens"] for h in timed) / sum(h["step_time_s"] for h in timed), 1
        ),
        "tokens_per_step": [h["num_tokens"] for h in hist],
        "losses": [round(h["loss"], 4) for h in hist],
        "train_wall_s": m["wall_time_s"],
        "wall_s_incl_export": round(wall, 1),
        "precision": sc.precision,
        # Per rank, the peak over model load and deepspeed.initialize (MiB; anonymous = without page cache).
        "setup_peak_rss_mb": setup_peaks(m["memory"], "peak_rss_mb"),
        "setup_anon_peak_mb": setup_peaks(m["memory"], "anon_peak_mb"),
        "load_params_mb": m["memory"].get("load_params_mb"),
        "load_avg_before": load_before,
        "load_avg_after": load_avg(),
    }


def run(
    cfg: Config, data_dir: str, num_examples: int, steps: int, zero_stages: tuple[int, ...]
) -> dict[str, Any]:
    from bench.common import ratio
    from palign_ray.sft import data as D
    from palign_ray.sft.records import build_shards

    tmp = Path(tempfile.mkdtemp(prefix="palign-bench-sft-"))
    try:
        shards = tmp / "shards"
        summary = build_shards(gsm8k_rows(data_dir, num_examples), cfg, "full_cot", shards)
        import pyarrow.parquet as pq

        lengths = [
            int(n)
            for f in D.shard_files(shards)
            for n in pq.read_table(f, columns=[D.NUM_TOKENS]).column(0).to_pylist()
        ]
        lengths = [n for n in lengths if n <= cfg.sft.max_seq_len]
        pad = padding(
            lengths, cfg.run.seed, cfg.sft.max_seq_len, tuple(sorted({cfg.sft.micro_batch_size, 4}))
        )
        # 1 thread = what Ray gives each 1-CPU worker; all cores = the usual single-process setting (on a
        # shared box OMP spin-waits can make it the slower one, so both are measured).
        plains = [plain_loop(str(shards), cfg, steps, t) for t in sorted({1, os.cpu_count() or 1})]
        rays = [ray_run(str(shards), cfg, z, steps, tmp) for z in zero_stages]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    plain = max(plains, key=lambda p: p["tokens_per_s"])
    for r in rays:
        r["tokens_per_s_ratio_vs_plain"] = ratio(r["tokens_per_s"], plain["tokens_per_s"])
    return {
        "model": cfg.sft.model,
        "data": f"GSM8K test, first {num_examples} rows as full_cot SFT examples",
        "num_examples": summary.get("num_examples"),
        "num_quarantined": summary.get("num_quarantined"),
        "example_tokens": {
            "min": min(lengths, default=0),
            "max": max(lengths, default=0),
            "mean": round(sum(lengths) / max(1, len(lengths)), 1),
        },
        "packing": cfg.sft.packing,
        "max_seq_len": cfg.sft.max_seq_len,
        "micro_batch_size": cfg.sft.micro_batch_size,
        "padding_share": pad,
        "plain_pytorch": plains,
        "plain_reference_threads": plain["threads"],
        "ray_train_deepspeed": rays,
    }
