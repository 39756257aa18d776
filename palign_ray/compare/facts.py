"""Per-method facts from the stage manifests and commit markers: SFT set, prefix ratio, training, tokens, wall times.

Where a stage's tokens are, and what of it to open, are its row's (`pipeline.STAGES`); what a method
fixes (full_cot's whole trace) is its row's (`pipeline.METHODS`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from palign_ray.artifacts import Manifest, StageDir, read_manifest
from palign_ray.pipeline import method_row, output_in, stage_output, stage_row


def _manifest(d: Path) -> Manifest | None:
    sd = StageDir(d)
    return read_manifest(sd.manifest_path) if sd.is_done() else None


def _stage_manifest(run: Any, stage: str) -> Manifest | None:
    return _manifest(run.dirs[stage]) if stage in run.dirs else None


def _stage_tokens(d: Path) -> dict[str, int] | None:
    from palign_ray.report import summary_tokens

    return summary_tokens(d) if d.is_dir() else None


def _mean_prefix_ratio(d: Path) -> float | None:
    import pyarrow.parquet as pq

    vals: list[float] = []
    for f in StageDir(d).output_files():
        if "prefix_ratio_sentences" in pq.read_schema(f).names:
            vals += [
                v
                for v in pq.read_table(f, columns=["prefix_ratio_sentences"]).column(0).to_pylist()
                if v is not None
            ]
    return sum(vals) / len(vals) if vals else None


def method_facts(run: Any, shared_with: dict[str, list[str]]) -> dict[str, Any]:
    """SFT set, prefix ratio, training, cost (tokens computed per stage) and wall time of one method."""
    sft_m, train_m = _stage_manifest(run, "sft_data"), _stage_manifest(run, "train")
    sft = (sft_m.summary or {}) if sft_m is not None else {}
    train = train_m.extra.get("metrics", {}) if train_m is not None else {}
    truncate_m = _stage_manifest(run, "truncate")
    stages: dict[str, Any] = {}
    for stage, d in run.dirs.items():
        m, row = _manifest(d), stage_row(stage)
        entry: dict[str, Any] = {
            "dir": str(d),
            "done": m is not None,
            "wall_s": m.wall_s if m is not None else None,
            "shared_with": [x for x in shared_with.get(str(d), []) if x != run.label],
        }
        if row.tokens:
            entry["tokens"] = _stage_tokens(d)
        if row.evaluation:
            entry["tokens"] = {"generated": _eval_generated(output_in(d, stage))}
        stages[stage] = entry
    computed = sum(
        t.get("prefilled", 0) - t.get("cached", 0) + t.get("generated", 0)
        for s in stages.values()
        if (t := s.get("tokens"))
    )
    ratio = method_row(run.cfg.run.method).prefix_ratio
    if ratio is None and "truncate" in run.dirs:
        ratio = _mean_prefix_ratio(stage_output(run.dirs, "truncate"))
    return {
        "method": run.cfg.run.method,
        "judge_search": run.cfg.judge.search,
        "fixed_ratio": run.cfg.judge.fixed_ratio,
        "sft_examples": sft.get("num_examples"),
        "sft_tokens": sft.get("num_tokens"),
        "sft_loss_tokens": sft.get("num_loss_tokens"),
        "sft_max_response_tokens": sft.get("max_loss_tokens"),
        "mean_prefix_ratio_sentences": ratio,
        "train_steps": train.get("num_steps"),
        "train_final_loss": train.get("final_loss"),
        "tokens_computed": computed,
        "stages": stages,
        # the judge's audit and validity (issue 24): a method whose judge is invalid is no method result
        "judge_audit": truncate_m.extra.get("judge_audit") if truncate_m is not None else None,
    }


def _eval_generated(d: Path) -> int:
    p = d / "metrics.json"
    return (
        int(json.loads(p.read_text()).get("timing", {}).get("generated_tokens", 0))
        if p.is_file()
        else 0
    )
