"""Judge benchmark: paper-reference vs batched rounds (generate, logprob) vs k-ary on the authors' long traces.

Also the search-optimality and prefix-cache-efficiency measures, which read the same output rows.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from palign_ray.config import Config

log = logging.getLogger(__name__)

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
TRACE_FILES = ("aime24-output.jsonl", "aime25-output.jsonl")
# (name, judge overrides); the paper reference also forces binary + generate (rounds.reference_config).
MODES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("paper_reference", {"paper_reference": True, "search": "binary", "verdict": "generate"}),
    ("batched_generate", {"search": "binary", "verdict": "generate"}),
    ("batched_logprob", {"search": "binary", "verdict": "logprob"}),
    ("kary_logprob", {"search": "kary", "verdict": "logprob"}),
)


# ---- pure parts ---------------------------------------------------------------------------------


def traces_from_lines(name: str, lines: Sequence[str]) -> list[list[dict[str, Any]]]:
    """Per problem, its traces {problem_id, question, cot, answer}: instruction and draft markers removed."""
    from palign_ray.judge.ingest import DRAFT_MARKERS

    problems = []
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        row = json.loads(line)
        q = row["prompt_ori"]
        q = q[len(INSTRUCTION) :].lstrip() if q.startswith(INSTRUCTION) else q
        problems.append(
            [
                {
                    "problem_id": f"{name}-{n:02d}-{i}",
                    "question": q,
                    "cot": DRAFT_MARKERS.sub("", out),
                    "answer": str(row.get("answer", "")),
                }
                for i, out in enumerate(row["output"])
            ]
        )
    return problems


def interleave(problems: list[list[dict[str, Any]]], limit: int) -> list[dict[str, Any]]:
    """Output 0 of every problem first, then output 1, ...: the first k traces span min(k, #problems) problems."""
    out = []
    depth = max((len(p) for p in problems), default=0)
    for i in range(depth):
        out += [p[i] for p in problems if i < len(p)]
    return out[:limit] if limit else out


def load_traces(data_dir: str | Path, limit: int) -> list[dict[str, Any]]:
    problems: list[list[dict[str, Any]]] = []
    for f in TRACE_FILES:
        path = Path(data_dir) / "palign-results" / f
        problems += traces_from_lines(f.split("-")[0], path.read_text().splitlines())
    return interleave(problems, limit)


def agreement(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Kept-prefix agreement on the problems both runs kept: identical prefix_sentences share, mean |Δ ratio|."""
    rb = {r["problem_id"]: r for r in b}
    pairs = [(r, rb[r["problem_id"]]) for r in a if r["problem_id"] in rb]
    if not pairs:
        return {"num_common": 0}
    n = len(pairs)
    return {
        "num_common": n,
        "identical_prefix_share": round(
            sum(x["prefix_sentences"] == y["prefix_sentences"] for x, y in pairs) / n, 4
        ),
        "mean_abs_diff_prefix_ratio_sentences": round(
            sum(abs(x["prefix_ratio_sentences"] - y["prefix_ratio_sentences"]) for x, y in pairs)
            / n,
            5,
        ),
        "mean_abs_diff_prefix_ratio_chars": round(
            sum(abs(x["prefix_ratio_chars"] - y["prefix_ratio_chars"]) for x, y in pairs) / n, 5
        ),
    }


def search_optimality(rows: Sequence[dict[str, Any]], kary_k: int) -> dict[str, Any]:
    """Probes per problem against ceil(log2(n+1)); rounds against the k-ary bound ceil(log_{k+1}(n+1))."""
    from palign_ray.judge.search import binary_probe_bound, kary_round_bound

    if not rows:
        return {"num_problems": 0}
    n = len(rows)
    pb = [binary_probe_bound(r["num_judged_sentences"]) for r in rows]
    kb = [kary_round_bound(r["num_judged_sentences"], kary_k) for r in rows]
    return {
        "num_problems": n,
        "mean_probes": round(sum(r["num_probes"] for r in rows) / n, 3),
        "mean_rounds": round(sum(r["num_rounds"] for r in rows) / n, 3),
        "mean_binary_probe_bound": round(sum(pb) / n, 3),
        "mean_kary_round_bound": round(sum(kb) / n, 3),
        "probes_over_binary_bound": round(sum(r["num_probes"] for r in rows) / sum(pb), 4),
        "rounds_over_kary_bound": round(sum(r["num_rounds"] for r in rows) / sum(kb), 4),
        "num_probes_within_binary_bound": sum(
            r["num_probes"] <= b for r, b in zip(rows, pb, strict=True)
        ),
        "num_rounds_within_kary_bound": sum(
            r["num_rounds"] <= b for r, b in zip(rows, kb, strict=True)
        ),
        "kary_k": kary_k,
    }


def cache_efficiency(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per problem: (prompt − cached tokens) / longest probe prompt (1.0 = the prefill lower bound with caching)."""
    from palign_ray.judge.summary import quantiles

    vals = []
    for r in rows:
        longest = max((p["prompt_tokens"] for p in r["probe_trace"]), default=0)
        if longest:
            vals.append((r["prompt_tokens"] - r["cached_tokens"]) / longest)
    q = quantiles(vals)
    return {"num_problems": len(vals), **{k: round(v, 4) for k, v in q.items()}}


def mode_stats(rows: Sequence[dict[str, Any]], seconds: Sequence[float]) -> dict[str, Any]:
    """Wall time (median over repeats), per-trace time, probes, rounds and tokens of one mode's rows."""
    from bench.common import median

    n = len(rows)
    t = median(seconds) or 0.0
    tot = lambda k: int(sum(r[k] for r in rows))  # noqa: E731
    return {
        "num_traces": n,
        "repeats": len(seconds),
        "seconds": [round(s, 3) for s in seconds],
        "median_s": round(t, 3),
        "s_per_trace": round(t / n, 4) if n else None,
        "probes": tot("num_probes"),
        "rounds_max": max((r["num_rounds"] for r in rows), default=0),
        "rounds_mean": round(tot("num_rounds") / n, 3) if n else None,
        "prompt_tokens": tot("prompt_tokens"),
        "cached_tokens": tot("cached_tokens"),
        "computed_prompt_tokens": tot("prompt_tokens") - tot("cached_tokens"),
        "generated_tokens": tot("generated_tokens"),
        "num_sufficient": sum(bool(r["is_sufficient"]) for r in rows),
        "num_unparseable": int(sum(r.get("num_unparseable", 0) for r in rows)),
        "enough_share": round(
            sum(p["verdict"] for r in rows for p in r["probe_trace"]) / max(1, tot("num_probes")), 4
        ),
        "mean_prefix_ratio_sentences": round(sum(r["prefix_ratio_sentences"] for r in rows) / n, 5)
        if n
        else None,
    }


def mode_config(cfg: Config, judge: dict[str, Any], engine: dict[str, Any] | None = None) -> Config:
    return dataclasses.replace(
        cfg,
        judge=dataclasses.replace(cfg.judge, **judge),
        engine=dataclasses.replace(cfg.engine, **(engine or {})),
    )


def compare_to_reference(
    stats: dict[str, dict[str, Any]], ref: str = "paper_reference"
) -> dict[str, Any]:
    """Per mode: speed-up in seconds per trace over the reference (reference s/trace ÷ mode s/trace)."""
    from bench.common import ratio

    base = stats.get(ref, {}).get("s_per_trace")
    return {m: ratio(base, s.get("s_per_trace")) for m, s in stats.items() if m != ref}


# ---- runners (heavy imports inside) -------------------------------------------------------------


def run_subset(items: list[dict[str, Any]], cfg: Config, repeats: int) -> dict[str, Any]:
    """All four modes on ONE in-process engine (prefix cache reset before every run): the side-by-side cost.

    paper_reference = one problem per engine call (what rounds.paper_reference_rows does); the others
    = one judge_rows call for all problems (what one JudgeUDF batch does), without Ray around it.
    The decode-and-parse modes (minutes per trace on a loaded CPU) run once; the logprob modes `repeats` times.
    """
    from palign_ray.engines.vllm_engine import VLLMEngine
    from palign_ray.judge.contract import check_input, reference_config
    from palign_ray.judge.probes import judge_tools
    from palign_ray.judge.rounds import judge_rows
    from palign_ray.models import resolve_model

    items, bad = check_input(items)
    assert not bad, bad
    t0 = time.perf_counter()
    engine = VLLMEngine(resolve_model(cfg.judge.model), cfg.engine)
    start_s = time.perf_counter() - t0
    stats, rows_by_mode = {}, {}
    try:
        _warm_up(engine, cfg)
        for name, judge in MODES:
            mcfg = mode_config(cfg, judge)
            jcfg = reference_config(mcfg.judge) if mcfg.judge.paper_reference else mcfg.judge
            builder, vt = judge_tools(engine.tokenizer, jcfg)
            secs, rows = [], []
            for _ in range(1 if mcfg.judge.verdict == "generate" else repeats):
                engine.reset_prefix_cache()
                t0 = time.perf_counter()
                if mcfg.judge.paper_reference:
                    rows = [
                        r
                        for it in items
                        for r in judge_rows(
                            engine, builder, vt, [it], jcfg, cfg.engine, jcfg.model, cfg.run.seed
                        )[0]
                    ]
                else:
                    rows = judge_rows(
                        engine, builder, vt, items, jcfg, cfg.engine, jcfg.model, cfg.run.seed
                    )[0]
                secs.append(time.perf_counter() - t0)
                log.info("judge subset %s: %d traces in %.1f s", name, len(items), secs[-1])
            stats[name], rows_by_mode[name] = mode_stats(rows, secs), rows
    finally:
        engine.shutdown()
    ref = rows_by_mode["paper_reference"]
    return {
        "engine_start_s": round(start_s, 2),
        "modes": stats,
        "speedup_vs_paper_reference": compare_to_reference(stats),
        "agreement_vs_paper_reference": {
            m: agreement(ref, r) for m, r in rows_by_mode.items() if m != "paper_reference"
        },
        "agreement_kary_vs_binary_logprob": agreement(
            rows_by_mode["batched_logprob"], rows_by_mode["kary_logprob"]
        ),
    }


def _warm_up(engine: Any, cfg: Config) -> None:
    """The first logprobs call of an engine costs seconds extra (ENVIRONMENT.md): pay it before timing."""
    from palign_ray.engines.base import SamplingSpec

    ids = list(engine.tokenizer.encode("Warm-up: is this enough?"))
    engine.generate(
        [ids], SamplingSpec(max_tokens=2, logprobs=2, logprob_token_ids=(ids[0], ids[1]))
    )
    engine.generate([ids], SamplingSpec(max_tokens=4))


def run_full(
    items: list[dict[str, Any]], cfg: Config, cache_off_items: int, generate_items: int
) -> dict[str, Any]:
    """The batched modes through truncate_rows (Ray Data actor pool), plus logprob with prefix caching off.

    Batched generate runs on the first `generate_items` traces only (0 = skipped): 256 decode steps per
    round cost minutes on a loaded 2-core box; on a GPU set it to the full count.
    """
    from palign_ray.judge.stage import truncate_rows

    sizes = {"batched_generate": generate_items}
    runs: list[tuple[str, list[dict[str, Any]], Config]] = [
        (name, items[: sizes.get(name, len(items))], mode_config(cfg, judge))
        for name, judge in MODES
        if name != "paper_reference" and sizes.get(name, len(items))
    ]
    if cache_off_items:
        runs.append(
            (
                "batched_logprob_no_prefix_cache",
                items[:cache_off_items],
                mode_config(cfg, dict(MODES)["batched_logprob"], {"enable_prefix_caching": False}),
            )
        )
    stats, rows_by_mode = {}, {}
    for name, its, mcfg in runs:
        t0 = time.perf_counter()
        rows, bad, summary = truncate_rows(its, mcfg)
        wall = time.perf_counter() - t0
        log.info(
            "judge full %s: %d traces, wall %.1f s, in-actor %.1f s",
            name,
            len(its),
            wall,
            summary["judge_s"],
        )
        s = mode_stats(rows, [summary["judge_s"]])
        s.update(
            wall_s=round(wall, 2),
            judge_s=summary["judge_s"],
            engine_calls=summary["engine_calls"],
            num_quarantined=len(bad),
            quarantine_reasons=summary["quarantine_reasons"],
            search_optimality=search_optimality(rows, mcfg.judge.kary_k),
            cache_efficiency=cache_efficiency(rows),
        )
        stats[name], rows_by_mode[name] = s, rows
    out: dict[str, Any] = {"modes": stats}
    if "batched_generate" in rows_by_mode:
        out["agreement_vs_batched_generate"] = {
            m: agreement(rows_by_mode["batched_generate"], r)
            for m, r in rows_by_mode.items()
            if m != "batched_generate"
        }
    return out
