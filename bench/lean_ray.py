"""The teacher stage with Ray's own background work trimmed, against the default stage and a plain
vLLM process (issue 29.1, design 6).

Why: after design 5 the stage's engine threads spin at their barriers and the host is no longer idle,
yet the stage reached 0.919x of a plain process. Diagnostics of 2026-12-06 (single runs, 128 prompts,
CPU seconds per process over 60 s of generation, /proc): the engine actor got 113.4 of the host's
120 s, the plain process 119.4. The rest went to Ray: the driver 1.9 s (Ray Data's scheduling loop,
which polls every 0.1 s), the DashboardAgent 0.5, Ray Data's three system actors 0.45 each, an idle
worker 0.37, the log monitor 0.6, raylet and GCS 0.35 each. Every Ray Python worker's main thread
wakes 100 times a second (the core worker's signal check, hard-coded at 10 ms). Each of those runs
preempts one of the engine's two OpenMP threads while the other spins at the barrier, so a second
of Ray's CPU costs the engine about two seconds of progress; the tokens/s ratio (0.908 in that
diagnostic pair) is below the CPU ratio (0.949). Single diagnostic runs with the scheduling loop at
1 s and Ray's metrics collection off gave the engine 114.0 and 114.8 CPU seconds (driver 1.9 -> 0.8 s,
DashboardAgent 0.5 -> 0.27 s); their tokens/s moved within the run-to-run noise (134.0 default,
138.8 and 133.2 trimmed), so only a designed comparison can say more.

Design 6 (committed before any arm ran):
- Workload: as designs 4 and 5 (bench/worker_niceness.py): the teacher stage at 128 prompts (1 actor,
  parts of 32, 4 in flight, T 0.6, max 256 tokens, natural stops), each arm in a fresh child process
  with its own local Ray; the plain arm is the scale bench's `bare-child` over the same prompts and
  seeds.
- Arms, in this order, three times: default (today's code), lean, plain. Lean = the same stage with
  Ray Data's scheduling-loop poll at 1.0 s instead of 0.1 s (its module constant
  WAIT_FOR_TASK_COMPLETION_TIMEOUT_S, set in the driver) and `RAY_enable_metrics_collection=0`,
  `RAY_event_stats=0` in the environment of the local Ray.
- Per arm: generated tokens/s over the generation window; the host's idle and steal share (/proc/stat).
- Rule: a triplet is valid when all three arms' steal is under 3%. With at least two valid triplets:
  (a) 29.1's goal counts as met for the lean stage when the mean of lean/plain is >= 0.95;
  (b) the lean settings become palign's defaults for a local CPU Ray only when the mean of
  lean/default is >= 1.02 and lean/default >= 1.0 in every valid triplet. Otherwise nothing changes
  and the note says so.

Run: python -m bench.lean_ray [--prompts 128] [--out bench/results/<date>-lean-ray.json]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from bench.worker_niceness import _child, design_args, plain_arm, report, shown, stage_arm

TRIPLETS = 3
MAX_STEAL = 0.03
GOAL = 0.95
ADOPT_MEAN = 1.02
LEAN_POLL_S = 1.0
LEAN_ENV = {"RAY_enable_metrics_collection": "0", "RAY_event_stats": "0"}


def _ratio(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    if a.get("tokens_per_s") and b.get("tokens_per_s"):
        return round(a["tokens_per_s"] / b["tokens_per_s"], 3)
    return None


def _mean(xs: list[float]) -> float | None:
    return round(sum(xs) / len(xs), 3) if xs else None


def verdict(arms: list[dict[str, Any]]) -> dict[str, Any]:
    """Design 6's rule over arms in run order (default, lean, plain, default, lean, plain, ...)."""
    triplets: list[dict[str, Any]] = []
    to_plain: list[float] = []
    to_default: list[float] = []
    for default, lean, plain in zip(arms[0::3], arms[1::3], arms[2::3], strict=False):
        lp, ld = _ratio(lean, plain), _ratio(lean, default)
        steal = max(a.get("steal", 1.0) for a in (default, lean, plain))
        valid = lp is not None and ld is not None and steal < MAX_STEAL
        triplets.append({"lean_plain": lp, "lean_default": ld, "valid": valid})
        if valid and lp is not None and ld is not None:
            to_plain.append(lp)
            to_default.append(ld)
    enough = len(to_plain) >= 2
    mean_plain, mean_default = _mean(to_plain), _mean(to_default)
    return {
        "triplets": triplets,
        "mean_lean_plain": mean_plain,
        "mean_lean_default": mean_default,
        "goal_met": enough and mean_plain is not None and mean_plain >= GOAL,
        "adopt_lean": enough
        and mean_default is not None
        and mean_default >= ADOPT_MEAN
        and min(to_default) >= 1.0,
    }


def lean_arm(run_dir: Path, prompts: int, env: dict[str, str]) -> dict[str, Any]:
    """The stage (`stage_child`) with the lean settings, in a fresh child process with its own Ray."""
    argv = ["bench.lean_ray", "child", str(run_dir), str(prompts)]
    return {"arm": "lean", **_child(argv, {**env, **LEAN_ENV}, "STAGE")}


def lean_child(run_dir: str, prompts: int) -> None:
    import ray.data._internal.execution.streaming_executor_state as state

    from bench.worker_niceness import stage_child

    state.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S = LEAN_POLL_S
    stage_child(run_dir, prompts)


def main() -> None:
    args, env, tmp = design_args("bench-lean-")
    arms: list[dict[str, Any]] = []
    for i in range(TRIPLETS):
        run_dir = tmp / f"default-{i}"
        arms.append(shown(stage_arm("default", run_dir, args.prompts, env)))
        arms.append(shown(lean_arm(tmp / f"lean-{i}", args.prompts, env)))
        arms.append(shown(plain_arm(run_dir, env)))  # the prompts the default arm wrote
    report("bench/lean_ray.py docstring (design 6)", args.prompts, arms, verdict(arms), args.out)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        lean_child(sys.argv[2], int(sys.argv[3]))
    else:
        main()
