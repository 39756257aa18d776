"""Judge calibration modes against ground truth: built-in worked solutions with a known decisive sentence.

Run as: .venv/bin/python -m bench.judge_calibration [--problems 32] [--style long --split train] [--aime 32] [--out runs/judge_calibration]

For each mode (absolute, contextual, relative at several thresholds, relative+linear+isotonic) the judge
(judge.model, logprob verdicts, batched rounds via truncate_rows) cuts each built-in solution; we report
the ENOUGH share (per round), the prefix-ratio distribution, contradictions, the Pearson/Spearman
correlation of the cut (prefix_sentences, 1-based) with decisive_sentence+1, and the share of cuts at or
after the decisive sentence. With --aime N the same modes also run on N real AIME traces (no ground
truth). Writes <out>/judge_calibration.json and <out>/judge_calibration.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from palign_ray.judge.measure import average_ranks

MODES: dict[str, dict[str, Any]] = {
    "absolute@0.5": {"calibration": "absolute", "threshold": 0.5},
    "contextual@-0.1": {"calibration": "contextual", "contextual_threshold": -0.1},
    "contextual@0": {"calibration": "contextual", "contextual_threshold": 0.0},
    "relative@0.1": {"calibration": "relative", "threshold": 0.1},
    "relative@0.2": {"calibration": "relative", "threshold": 0.2},
    "relative@0.3": {"calibration": "relative", "threshold": 0.3},
    "relative@0.5": {"calibration": "relative", "threshold": 0.5},
    "relative@0.7": {"calibration": "relative", "threshold": 0.7},
    "relative@0.3+linear+isotonic": {
        "calibration": "relative",
        "threshold": 0.3,
        "search": "linear",
        "isotonic": True,
    },
}


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    n = len(x)
    if n < 2:
        return float("nan")
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sx, sy = math.sqrt(sum((a - mx) ** 2 for a in x)), math.sqrt(sum((b - my) ** 2 for b in y))
    return sxy / (sx * sy) if sx > 0 and sy > 0 else float("nan")


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    return pearson(average_ranks(x), average_ranks(y))


def builtin_rows(
    n: int, seed: int, split: Any = "all", style: Any = "short"
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    from palign_ray.builtin import builtin_problems

    probs = builtin_problems(n, seed, split, style)
    rows = [
        {
            "problem_id": p["problem_id"],
            "question": p["question"],
            "cot": p["solution"],
            "answer": p["answer"],
        }
        for p in probs
    ]
    return rows, {p["problem_id"]: int(p["decisive_sentence"]) + 1 for p in probs}


def aime_rows(n: int, data_dir: str) -> list[dict[str, Any]]:
    path = os.path.join(data_dir, "palign-results", "aime25-output.jsonl")
    src = [json.loads(line) for line in open(path)]
    rows = []
    for i, r in enumerate(src):
        for j in range(len(r["output"])):
            if len(rows) < n:
                rows.append(
                    {
                        "problem_id": f"{i}-{j}",
                        "question": r["prompt_ori"],
                        "cot": r["output"][j]
                        .replace("<Begin_of_Draft>", "")
                        .replace("<End_of_Draft>", ""),
                        "answer": str(r["answer"]),
                    }
                )
    return rows


def metrics(
    out: list[dict[str, Any]], summary: dict[str, Any], truth: dict[str, int] | None
) -> dict[str, Any]:
    rp = summary["prefix_ratio_sentences"]
    m: dict[str, Any] = {
        "num_output": summary["num_output"],
        "num_quarantined": summary["num_quarantined"],
        "enough_share": round(summary["enough_share"], 3),
        "enough_share_by_round": summary["enough_share_by_round"],
        "prefix_ratio": {k: round(v, 3) for k, v in rp.items()},
        "share_first_sentence": round(summary["share_cut_at_first_sentence"], 3),
        "share_full_trace": round(summary["share_cut_at_full_trace"], 3),
        "num_sufficient": summary["num_sufficient"],
        "calibration_status": summary["calibration_status"],
        "contradictions": summary["num_contradictions"],
        "problems_non_monotone": summary["num_non_monotone"],
        "degenerate": summary["degenerate"],
        "num_probes": summary["num_probes"],
        "num_calibration_probes": summary["num_calibration_probes"],
        "engine_calls": summary["engine_calls"],
        "judge_s": summary["judge_s"],
    }
    if truth:
        cut = [float(r["prefix_sentences"]) for r in out]
        dec = [float(truth[r["problem_id"]]) for r in out]
        m.update(
            pearson=round(pearson(cut, dec), 3),
            spearman=round(spearman(cut, dec), 3),
            share_at_or_after_decisive=round(
                sum(c >= d for c, d in zip(cut, dec, strict=True)) / len(cut), 3
            ),
            share_exactly_decisive=round(
                sum(c == d for c, d in zip(cut, dec, strict=True)) / len(cut), 3
            ),
        )
    return m


def run_mode(
    rows: list[dict[str, Any]], judge: dict[str, Any], model: str, max_cot_tokens: int
) -> tuple[list, dict]:
    from palign_ray.config import Config, EngineConfig, JudgeConfig, RayConfig, RunConfig
    from palign_ray.judge.stage import truncate_rows

    cfg = Config(
        run=RunConfig(seed=0),
        engine=EngineConfig(max_model_len=2048, max_num_seqs=64),
        ray=RayConfig(num_cpus=4, num_actors=1, num_cpus_per_actor=1, batch_size=64),
        judge=JudgeConfig(
            model=model, search="binary", verdict="logprob", max_cot_tokens=max_cot_tokens
        ),
    )
    cfg = dataclasses.replace(cfg, judge=dataclasses.replace(cfg.judge, **judge))
    out, _, summary = truncate_rows(rows, cfg)
    return out, summary


def table(results: dict[str, dict[str, Any]], truth: bool) -> str:
    head = [
        "mode",
        "ENOUGH share",
        "by round",
        "ratio p10/p25/p50/p75/p90",
        "at s1",
        "full",
        "contradictions",
    ]
    if truth:
        head += ["pearson", "spearman", "≥ decisive", "= decisive"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in results.items():
        rp = m["prefix_ratio"]
        by = ", ".join(f"{v:.2f}" for v in m["enough_share_by_round"].values())
        cells = [
            name,
            f"{m['enough_share']:.2f}",
            by,
            "/".join(f"{rp.get(q, float('nan')):.2f}" for q in ("p10", "p25", "p50", "p75", "p90")),
            f"{m['share_first_sentence']:.2f}",
            f"{m['share_full_trace']:.2f}",
            str(m["contradictions"]),
        ]
        if truth:
            cells += [
                f"{m['pearson']:.2f}",
                f"{m['spearman']:.2f}",
                f"{m['share_at_or_after_decisive']:.2f}",
                f"{m['share_exactly_decisive']:.2f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problems", type=int, default=32, help="built-in problems (ground truth)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", choices=("all", "train", "heldout"), default="all")
    p.add_argument(
        "--style", choices=("short", "long"), default="short", help="built-in solution style"
    )
    p.add_argument(
        "--aime", type=int, default=0, help="also run on this many real AIME traces (0 = skip)"
    )
    p.add_argument(
        "--modes", default=",".join(MODES), help="comma-separated subset of: " + ", ".join(MODES)
    )
    p.add_argument("--model", default="default")
    p.add_argument("--max-cot-tokens", type=int, default=1536)
    p.add_argument("--data", default="/work/shared/data")
    p.add_argument("--out", default="runs/judge_calibration")
    a = p.parse_args(argv)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from palign_ray.models import resolve_model

    model = resolve_model(a.model)
    sets: dict[str, tuple[list[dict[str, Any]], dict[str, int] | None]] = {
        "builtin": builtin_rows(a.problems, a.seed, a.split, a.style)
    }
    if a.aime:
        sets["aime"] = (aime_rows(a.aime, a.data), None)
    report: dict[str, Any] = {
        "model": a.model,
        "problems": a.problems,
        "seed": a.seed,
        "split": a.split,
        "style": a.style,
        "aime": a.aime,
        "results": {},
    }
    md = [f"# Judge calibration ({a.model})", ""]
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for set_name, (rows, truth) in sets.items():
        res: dict[str, dict[str, Any]] = {}
        for name in a.modes.split(","):
            t = time.perf_counter()
            out, summary = run_mode(rows, MODES[name], model, a.max_cot_tokens)
            res[name] = metrics(out, summary, truth) | {"wall_s": round(time.perf_counter() - t, 1)}
            print(set_name, name, json.dumps(res[name]), flush=True)
            report["results"][set_name] = res
            (out_dir / "judge_calibration.json").write_text(json.dumps(report, indent=1))
            # rewritten after every mode so an interrupted run still leaves its tables
            part = [f"## {set_name} ({len(rows)} traces)", "", table(res, truth is not None), ""]
            (out_dir / "judge_calibration.md").write_text("\n".join(md + part))
        md += part
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
