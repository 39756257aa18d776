"""Engine actors at Ray's worker niceness (15) vs 0 on a 2-core CPU box (issue 29.1, design 4).

Why: Ray starts every worker process, engine actors included, at nice 15 (raylet `worker_niceness`);
the driver, raylet and GCS run at 0. A vLLM-CPU engine runs OpenMP teams that meet at a barrier per
kernel: when a nice-0 process wakes on one of the two cores it preempts that engine thread at once
and the other thread spins at the barrier. Diagnostics of 2026-12-06 (single runs, not results): the
teacher stage left ~15% of the CPU idle while a plain vLLM process left ~4%, and its actor burned ~8%
more CPU seconds per generated token than the plain process; one stage run with
`RAY_worker_niceness=0` gave 123.1 tok/s against 120.1 at 15.

Design 4 (committed before any arm ran):
- Workload: the scale bench's section a at 128 prompts (teacher stage, 1 actor, parts of 32, 4 in
  flight, T 0.6, max 256 tokens, natural stops, the bench's config), each arm in a fresh child
  process that starts its own local Ray with `RAY_worker_niceness` set as the arm says.
- Arms, in this order: nice15 (it also writes the problems), a plain vLLM process (scale bench
  `bare-child`, same prompts and seeds), nice0, nice15, nice0, the plain process again.
- Per arm: generated tokens/s over the generation window; the host's idle and steal share of CPU
  time over the child's whole run (/proc/stat).
- Rule: a pair is valid when both arms' steal is under 3%. If the mean ratio nice0/nice15 over the
  valid pairs is >= 1.03 and each valid pair's ratio is >= 1.0, a local Ray started by palign sets
  `RAY_worker_niceness=0` (cluster/raycluster.yaml too). Otherwise nothing changes and the note says
  so. Either way the plain-process arms bound what the stage can reach on this host today.

Run: python -m bench.worker_niceness [--prompts 128] [--out bench/results/<date>-worker-niceness.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Section a's teacher settings, the same for the stage arms and the plain process
SAMPLING: dict[str, Any] = {
    "teacher__num_samples": 1,
    "teacher__max_tokens": 256,
    "teacher__temperature": 0.6,
    "teacher__use_reference_solutions": True,
}


def _cpu_times() -> list[int]:
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:]]


def _share(before: list[int], after: list[int]) -> dict[str, float]:
    d = [b - a for a, b in zip(before, after, strict=False)]
    total = sum(d) or 1
    return {"idle": round(d[3] / total, 4), "steal": round(d[7] / total, 4)}


def _child(args: list[str], env: dict[str, str], tag: str) -> dict[str, Any]:
    before, t0 = _cpu_times(), time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=3600,
    )
    share, wall = _share(before, _cpu_times()), time.perf_counter() - t0
    line = [x for x in proc.stdout.splitlines() if x.startswith(tag + " ")]
    got = json.loads(line[-1][len(tag) + 1 :]) if line else {"error": proc.stderr[-2000:]}
    return {**got, **share, "child_wall_s": round(wall, 1)}


def stage_child(run_dir: str, prompts: int) -> None:
    """Problems + teacher stage (section a's settings) in this process's own local Ray."""
    from bench.run import BENCH_DEFAULTS
    from bench.scale_bench import _cfg, generation_span
    from palign_ray import pipeline as P
    from palign_ray.artifacts import StageDir
    from palign_ray.config import load_config

    cfg = _cfg(
        load_config(None, list(BENCH_DEFAULTS)),
        Path(run_dir),
        problems__num_problems=prompts,
        **SAMPLING,
        run__chunk_size=32,
        ray__num_actors=1,
    )
    P.run_pipeline(cfg, ["problems", "teacher"])
    tokens, span = generation_span(StageDir(Path(run_dir) / "teacher"))
    out = {
        "generated_tokens": tokens,
        "span_s": round(span, 2),
        "tokens_per_s": round(tokens / span, 2),
    }
    print("STAGE " + json.dumps(out), flush=True)


def child_env() -> dict[str, str]:
    """This process's environment without the variables that an arm sets for itself."""
    return {
        k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "RAY_worker_niceness")
    }


def stage_arm(name: str, run_dir: Path, prompts: int, env: dict[str, str]) -> dict[str, Any]:
    """The teacher stage (`stage_child`) in a fresh child process with its own local Ray."""
    argv = ["bench.worker_niceness", "child", str(run_dir), str(prompts)]
    return {"arm": name, **_child(argv, env, "STAGE")}


def plain_arm(problems_dir: Path, env: dict[str, str]) -> dict[str, Any]:
    """A plain vLLM process (scale bench `bare-child`) over the prompts and seeds of the stage arm
    that wrote `problems_dir`, in a fresh child process."""
    from bench.run import BENCH_DEFAULTS
    from bench.scale_bench import _cfg, _child_cfg
    from palign_ray.config import load_config

    cfg = _cfg(load_config(None, list(BENCH_DEFAULTS)), problems_dir, **SAMPLING)
    argv = ["bench.scale_bench", "bare-child", str(problems_dir), json.dumps(_child_cfg(cfg))]
    return {"arm": "plain", **_child(argv, env, "BARE")}


def shown(arm: dict[str, Any]) -> dict[str, Any]:
    """`arm`, printed as one JSON line as soon as it has run (a long design shows its progress)."""
    print(json.dumps(arm), flush=True)
    return arm


def design_args(prefix: str) -> tuple[argparse.Namespace, dict[str, str], Path]:
    """A stage-vs-plain design's command line (--prompts, --out), the arms' environment, a scratch dir."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--out", default="")
    return ap.parse_args(), child_env(), Path(tempfile.mkdtemp(prefix=prefix))


def report(
    design: str, prompts: int, arms: list[dict[str, Any]], verdict: dict[str, Any], out: str
) -> None:
    """Print a design's verdict and write its arms and verdict to `out` (JSON) when given."""
    result = {"design": design, "prompts": prompts, "arms": arms, **verdict}
    print(json.dumps({k: v for k, v in result.items() if k != "arms"}), flush=True)
    if out:
        Path(out).write_text(json.dumps(result, indent=1) + "\n")


def main() -> None:
    args, base, tmp = design_args("bench-nice-")
    problems_dir = tmp / "nice15-0"
    arms: list[dict[str, Any]] = []
    order = [("nice15", "15"), ("nice0", "0"), ("nice15", "15"), ("nice0", "0")]

    def bare() -> dict[str, Any]:
        return plain_arm(problems_dir, base)

    for i, (name, nice) in enumerate(order):
        run_dir = tmp / f"{name}-{i}"
        arms.append(
            shown(stage_arm(name, run_dir, args.prompts, {**base, "RAY_worker_niceness": nice}))
        )
        if i == 0:  # the plain process needs the problems the first arm wrote
            arms.insert(0, shown(bare()))
    arms.append(shown(bare()))
    out = {
        "design": "bench/worker_niceness.py docstring (design 4)",
        "prompts": args.prompts,
        "arms": arms,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        stage_child(sys.argv[2], int(sys.argv[3]))
    else:
        main()
