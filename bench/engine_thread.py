"""The teacher stage against a plain vLLM process once the engine lives on one thread (issue 29.1, design 5).

Why: the stage's engine was built on one thread (the caller's) and stepped on another (its loop
thread). libgomp gives every thread that opens an OpenMP parallel region its own pool of workers, and
when a process has more OpenMP threads than cores (here 3 on 2) it shortens the spin at barriers from
~300,000 iterations to 100, so the workers sleep on a futex at every kernel of every step. Diagnostics
of 2026-12-06 (single runs, no Ray, 128 prompts; bench/results/2026-12-06-engine-thread.md):
`agenerate` through the loop thread 137.0 tok/s with the host 14.2% idle, the plain `LLM.generate`
149.2 tok/s and 4.5% idle; the loop thread's OpenMP worker made 243k voluntary context switches, the
plain process's 25. With the engine built and stepped on one thread (this change) the same `agenerate`
run gave 147.4 tok/s, 4.4% idle, 6 voluntary switches.

Design 5 (committed before any arm ran):
- Workload: as design 4 (bench/worker_niceness.py): the teacher stage at 128 prompts (1 actor, parts
  of 32, 4 in flight, T 0.6, max 256 tokens, natural stops), each arm in a fresh child process with
  its own local Ray at Ray's default worker niceness; the plain arm is the scale bench's `bare-child`
  over the same prompts and seeds.
- Arms, in this order: stage, plain, stage, plain, stage, plain (three neighbouring pairs).
- Per arm: generated tokens/s over the generation window; the host's idle and steal share of CPU
  time over the child's run (/proc/stat).
- Rule: a pair is valid when both arms' steal is under 3%. The goal of 29.1 (the stage at >= 0.95x of
  a plain process) counts as met on this host when at least two pairs are valid and the mean of
  stage/plain over the valid pairs is >= 0.95. Before this change, design 4's neighbouring pairs gave
  0.911 and 0.914.

Run: python -m bench.engine_thread [--prompts 128] [--out bench/results/<date>-engine-thread.json]
"""

from __future__ import annotations

from typing import Any

from bench.worker_niceness import design_args, plain_arm, report, shown, stage_arm

PAIRS = 3
MAX_STEAL = 0.03
GOAL = 0.95


def verdict(arms: list[dict[str, Any]]) -> dict[str, Any]:
    """Design 5's rule over arms in run order (stage, plain, stage, plain, ...)."""
    pairs: list[dict[str, Any]] = []
    good: list[float] = []  # the ratios of the valid pairs
    for stage, plain in zip(arms[0::2], arms[1::2], strict=False):
        ratio = None
        if stage.get("tokens_per_s") and plain.get("tokens_per_s"):
            ratio = round(stage["tokens_per_s"] / plain["tokens_per_s"], 3)
        valid = ratio is not None and max(stage["steal"], plain["steal"]) < MAX_STEAL
        pairs.append({"ratio": ratio, "valid": valid})
        if valid and ratio is not None:
            good.append(ratio)
    mean = round(sum(good) / len(good), 3) if good else None
    return {
        "pairs": pairs,
        "mean_valid_ratio": mean,
        "goal_met": len(good) >= 2 and mean is not None and mean >= GOAL,
    }


def main() -> None:
    args, env, tmp = design_args("bench-thread-")
    arms: list[dict[str, Any]] = []
    for i in range(PAIRS):
        run_dir = tmp / f"stage-{i}"
        arms.append(shown(stage_arm("stage", run_dir, args.prompts, env)))
        arms.append(shown(plain_arm(run_dir, env)))  # the prompts this stage arm wrote
    report(
        "bench/engine_thread.py docstring (design 5)", args.prompts, arms, verdict(arms), args.out
    )


if __name__ == "__main__":
    main()
