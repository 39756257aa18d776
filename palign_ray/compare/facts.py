"""Per-method facts from the stage manifests and commit markers: SFT set, prefix ratio, training, tokens, wall times."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from palign_ray.artifacts import StageDir
from palign_ray.compare.table import BASE


def _manifest(d: Path) -> dict[str, Any] | None:
    sd = StageDir(d)
    return sd.manifest() if sd.is_done() else None


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
    sft = (
        (_manifest(run.dirs["sft_data"]) or {}).get("summary", {}) if "sft_data" in run.dirs else {}
    )
    train = (_manifest(run.dirs["train"]) or {}).get("metrics", {}) if "train" in run.dirs else {}
    stages: dict[str, Any] = {}
    for stage, d in run.dirs.items():
        m = _manifest(d)
        entry: dict[str, Any] = {
            "dir": str(d),
            "done": m is not None,
            "wall_s": (m or {}).get("wall_s"),
            "shared_with": [x for x in shared_with.get(str(d), []) if x != run.label],
        }
        if stage in ("teacher", "truncate", "align"):
            entry["tokens"] = _stage_tokens(d)
        if stage in ("base_eval", "eval"):
            entry["tokens"] = {
                "generated": _eval_generated(d / (BASE if stage == "base_eval" else "trained"))
            }
        stages[stage] = entry
    computed = sum(
        t.get("prefilled", 0) - t.get("cached", 0) + t.get("generated", 0)
        for s in stages.values()
        if (t := s.get("tokens"))
    )
    ratio = (
        1.0
        if run.cfg.run.method == "full_cot"
        else (_mean_prefix_ratio(run.dirs["truncate"]) if "truncate" in run.dirs else None)
    )
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
        "judge_audit": (_manifest(run.dirs["truncate"]) or {}).get("judge_audit")
        if "truncate" in run.dirs
        else None,
    }


def _eval_generated(d: Path) -> int:
    p = d / "metrics.json"
    return (
        int(json.loads(p.read_text()).get("timing", {}).get("generated_tokens", 0))
        if p.is_file()
        else 0
    )
