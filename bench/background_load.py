"""A plain vLLM process with and without a synthetic stand-in for Ray's background (issue 29.1, design 7).

Why: designs 5 and 6 left the teacher stage at 0.92-0.95x of a plain vLLM process on this 2-core host,
and the per-process diagnostics of 2026-12-06 (bench/results/2026-12-06-lean-ray.md) put the rest on
Ray's own processes: ~6.5 CPU seconds a minute (0.108 of a core) in ~10 processes whose threads wake
about every 10 ms. The claim behind the note is that this background costs the engine about twice its
CPU, because while it holds one core the engine's other OpenMP thread spins at the barrier. If that
holds, no stage that runs under Ray's background can reach 0.95x here, whatever palign does; if the
cost is only the CPU share, the floor is ~0.95 and something in palign still loses the rest.

Design 7 (committed before any arm ran):
- Workload: the scale bench's `bare-child` (plain `LLM.generate`, vLLM's own threading) over the 128
  prompts and seeds of design 6 (teacher settings of bench/worker_niceness.py).
- Load: 8 processes, each waking every 10 ms and spinning 80 us (with Python's own cost of a wake-up,
  ~55 us here, about 0.0135 of a core each: 8 x 0.0135 = 0.108, Ray's measured background, at Ray's
  wake-up rate; 135 us of spin measured 0.152 of a core before the run). Started before the plain
  arm, stopped after it.
- Arms, in this order: plain, plain+load, plain, plain+load (two neighbouring pairs).
- Per arm: tokens/s of the generate call; the host's idle and steal share (/proc/stat); per load arm
  the load's own CPU seconds (so the load it really put on is reported, not the nominal one).
- Prediction of each model for loaded/plain, from the load's measured CPU share s of the 2-core host:
  CPU share only: 1 - s (about 0.946); twice the CPU (barrier spin): 1 - 2s (about 0.892).
- Rule: pairs with steal < 3% in both arms are valid; with two valid pairs, the mean loaded/plain is
  read against the two predictions: within 0.015 of 1 - 2s, or below it, supports "about twice the
  CPU" (and with it the floor argument); within 0.015 of 1 - s, or above it, supports "CPU share
  only"; anything else is inconclusive.

Run: python -m bench.background_load PROBLEMS_RUN_DIR [--out bench/results/<date>-background-load.json]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any

from bench.worker_niceness import _cpu_times, child_env, plain_arm, report, shown

LOADERS = 8
PERIOD_S = 0.010
BUSY_S = 0.00008
PAIRS = 2
MAX_STEAL = 0.03
TOLERANCE = 0.015
HZ = os.sysconf("SC_CLK_TCK")  # /proc's clock ticks per second


def _loader(stop: Any) -> None:
    """Wake every PERIOD_S and spin for BUSY_S, until `stop` is set."""
    tick = time.perf_counter()
    while not stop.is_set():
        end = time.perf_counter() + BUSY_S
        while time.perf_counter() < end:
            pass
        tick += PERIOD_S
        time.sleep(max(0.0, tick - time.perf_counter()))


def _cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / HZ


def loaded_arm(problems_dir: Path, env: dict[str, str]) -> dict[str, Any]:
    """The plain arm with the synthetic background running beside it."""
    stop = mp.Event()
    procs = [mp.Process(target=_loader, args=(stop,), daemon=True) for _ in range(LOADERS)]
    for p in procs:
        p.start()
    t0, host0 = time.perf_counter(), sum(_cpu_times())
    try:
        arm = plain_arm(problems_dir, env)
        load_s = _cpu_seconds([p.pid for p in procs if p.pid])
    finally:
        stop.set()
        for p in procs:
            p.join(timeout=5)
    wall = time.perf_counter() - t0
    host_ticks = sum(_cpu_times()) - host0
    return {
        **arm,
        "arm": "plain+load",
        "load_cpu_s": round(load_s, 2),
        "load_share": round(load_s / (host_ticks / HZ), 4) if host_ticks else None,
        "wall_s": round(wall, 1),
    }


def verdict(arms: list[dict[str, Any]]) -> dict[str, Any]:
    """Design 7's rule over arms in run order (plain, plain+load, ...)."""
    ratios: list[float] = []
    shares: list[float] = []
    pairs = []
    for plain, loaded in zip(arms[0::2], arms[1::2], strict=False):
        ok = bool(
            plain.get("tokens_per_s") and loaded.get("tokens_per_s") and loaded.get("load_share")
        )
        valid = ok and max(plain.get("steal", 1.0), loaded.get("steal", 1.0)) < MAX_STEAL
        ratio = round(loaded["tokens_per_s"] / plain["tokens_per_s"], 3) if ok else None
        pairs.append({"ratio": ratio, "load_share": loaded.get("load_share"), "valid": valid})
        if valid and ratio is not None:
            ratios.append(ratio)
            shares.append(loaded["load_share"])
    if len(ratios) < 2:
        return {"pairs": pairs, "supports": "too few valid pairs"}
    mean, s = sum(ratios) / len(ratios), sum(shares) / len(shares)
    share_only, doubled = 1 - s, 1 - 2 * s
    if mean <= doubled + TOLERANCE:
        supports = "about twice the CPU"
    elif mean >= share_only - TOLERANCE:
        supports = "CPU share only"
    else:
        supports = "inconclusive"
    return {
        "pairs": pairs,
        "mean_ratio": round(mean, 3),
        "mean_load_share": round(s, 4),
        "predicted_share_only": round(share_only, 3),
        "predicted_doubled": round(doubled, 3),
        "supports": supports,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("problems_run_dir", help="a run dir whose problems/ the plain arm reads")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    env = child_env()
    problems = Path(args.problems_run_dir)
    arms: list[dict[str, Any]] = []
    for _ in range(PAIRS):
        arms.append(shown(plain_arm(problems, env)))
        arms.append(shown(loaded_arm(problems, env)))
    report("bench/background_load.py docstring (design 7)", 128, arms, verdict(arms), args.out)


if __name__ == "__main__":
    main()
