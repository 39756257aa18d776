"""The sft_data stage as a streaming row stage: workers tokenize their input part into a shard part.

`<run>/sft_data/shards/` is a stage directory of committed parts (see `artifacts.StageDir`): each
input part (align's, or the teacher's/truncate's for full_cot/prefix_only) becomes one shard part of
the same problems, written by the actor that tokenized it, with its quarantine and commit marker.
A problem's rows (align's samples) arrive in one input part and stay in one shard part, so the
duplicate-example check of a part covers the problem, and a killed stage resumes with the missing
parts only. The driver holds counts: it sums the commit markers into the stage summary and writes
`sft_meta.json` (listing the committed parts) last, which is what `train` requires.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

from palign_ray import records as R
from palign_ray.artifacts import StageDir, write_json
from palign_ray.config import Config
from palign_ray.ray_env import beside_driver
from palign_ray.sft.records import (
    META_FILE,
    STAGE,
    build_examples,
    load_tokenizer,
    shard_meta,
    shard_schema,
)
from palign_ray.streaming import StreamJob, StreamResult, run_stream

SHARDS = "shards"  # <run>/sft_data/shards: what train reads


class SftDataWorker:
    """Inside an actor: sft.model's tokenizer (loaded once), one input part → shard rows + quarantine."""

    def __init__(self, cfg: Config, method: str, on_engine_start: Any = None):
        self.cfg, self.method = cfg, method
        self.tokenizer = load_tokenizer(cfg.sft.model)

    async def process(
        self, rows: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
        examples, quar, stats = await asyncio.to_thread(
            build_examples, rows, self.tokenizer, self.method, self.cfg.align
        )
        problems_in = {str(r.get(R.PROBLEM_ID)) for r in rows}
        problems_out = {e[R.PROBLEM_ID] for e in examples}
        return (
            examples,
            quar,
            {**stats, "num_problems_in": len(problems_in), "num_problems_out": len(problems_out)},
        )

    def close(self) -> None:
        pass


def sft_data_job(cfg: Config, method: str) -> StreamJob:
    """Tokenizing needs no accelerator: the actors reserve CPU only, whatever the engines ask for."""
    return StreamJob(
        STAGE,
        SftDataWorker,
        {"cfg": cfg, "method": method},
        dataclasses.replace(cfg.ray, num_gpus_per_actor=0.0),
        part_rows=0,
        schema=shard_schema,
        whole_files=True,
    )


def shard_summary(commits: list[dict[str, Any]], shards: list[str]) -> dict[str, Any]:
    """The stage summary (the keys `build_shards` returns) from the parts' commit markers.

    Sums are exact because a problem lives in one part; `max_loss_tokens` is the largest part's.
    """
    parts = [c.get("summary", {}) for c in commits]
    total = lambda key: sum(int(p.get(key, 0)) for p in parts)  # noqa: E731
    reasons: dict[str, int] = {}
    for c in commits:
        for k, v in c.get("reasons", {}).items():
            reasons[k] = reasons.get(k, 0) + int(v)
    problems_in, problems_out = total("num_problems_in"), total("num_problems_out")
    return {
        "stage": STAGE,
        "num_in": sum(int(c.get("num_input", 0)) for c in commits),
        "num_out": sum(int(c.get("num_output", 0)) for c in commits),
        "num_problems_in": problems_in,
        "num_problems_out": problems_out,
        "num_quarantined": sum(int(c.get("num_quarantined", 0)) for c in commits),
        "reasons": reasons,
        "retention": round(problems_out / problems_in, 4) if problems_in else 0.0,
        "shards": shards,
        "method": next((p["method"] for p in parts if "method" in p), ""),
        "num_examples": total("num_examples"),
        "num_split_tokenized": total("num_split_tokenized"),
        "num_tokens": total("num_tokens"),
        "num_loss_tokens": total("num_loss_tokens"),
        "max_loss_tokens": max((int(p.get("max_loss_tokens", 0)) for p in parts), default=0),
    }


def chat_template(model: str) -> Any:
    """The chat template of `model`'s tokenizer, as sft_meta.json records it."""
    return load_tokenizer(model).chat_template


def build_stage_shards(
    cfg: Config, method: str, input_files: list[Path], out: StageDir
) -> tuple[dict[str, Any], StreamResult]:
    """Stream `input_files` into shard parts in `out`, then write `sft_meta.json`; (summary, result)."""
    if out.root.exists() and not out.commits_dir.is_dir():
        out.reset()  # shards of the old layout were written whole, in one go: nothing to resume
    meta_path = out.root / META_FILE
    meta_path.unlink(missing_ok=True)  # listed parts change: train must not read a stale list
    res = run_stream(sft_data_job(cfg, method), input_files, out)
    commits = out.commits()  # read once: one marker file per part
    shards = [
        f for c in commits for f in c["files"] if "/" not in f
    ]  # output files, not quarantine
    summary = shard_summary(commits, shards)
    # the chat template is read by a worker beside the driver: importing transformers grew the driver
    # by ~470 MB (bench/results/2026-12-06-driver-rss.md)
    template = beside_driver(cfg.ray, chat_template, cfg.sft.model)
    write_json(
        meta_path,
        {
            **shard_meta(cfg, template, {**summary, "method": summary["method"] or method}),
            "parts": shards,
        },
    )
    return summary, res
