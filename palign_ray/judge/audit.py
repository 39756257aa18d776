"""The judge audit: the student rolls out from the chosen cut and three reference prefixes of a seeded sample.

For each audited problem the student continues (the align stage's prompt, sampling and grader: the
same functions, imported from palign_ray.align) from four prefixes of the judged trace:

  cut      the prefix the judge chose (`prefix_sentences`),
  shorter  one sentence less (the empty prefix when the cut is sentence 1),
  full     the whole judged trace (the ceiling),
  empty    no reasoning at all (the floor).

A judge carries signal when the cut solves clearly more often than the floor; its cuts are minimal
when one sentence less fails. The counts go into the truncate row (`audit`, and every rollout with
its text and grade in `audit_rollouts`), so the audit resumes with its part and every number in
`palign_ray.judge.measure` can be re-derived per problem. The rollouts run on the judge actor's own
engine (the judge is the student), so no second engine starts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

from palign_ray import records as R
from palign_ray.config import Config
from palign_ray.generation import derive_seed

log = logging.getLogger(__name__)

ARMS = ("cut", "shorter", "full", "empty")
AUDIT = "audit"  # struct of counts per audited row (null elsewhere)
AUDIT_ROLLOUTS = "audit_rollouts"  # list of every audit continuation (text, grade, tokens)
KNOWN_CUT = "known_cut"  # the known shortest sufficient prefix in sentences (-1: not known)
_SEP = "|audit:"  # generation ids are "<problem_id>|audit:<arm>", so each arm gets its own seed


def audit_sample(ids: Iterable[str], n: int, seed: int) -> frozenset[str]:
    """The `n` ids with the smallest seeded hash: the same sample whatever the order or part split."""
    if n <= 0:
        return frozenset()
    return frozenset(sorted(set(ids), key=lambda i: (derive_seed(seed, i, "audit"), i))[:n])


def check_audit_config(cfg: Config) -> None:
    j = cfg.judge
    if j.audit_problems < 0 or j.audit_samples < 1:
        raise ValueError(
            f"judge.audit_problems={j.audit_problems} must be >= 0 and judge.audit_samples="
            f"{j.audit_samples} >= 1"
        )


def audit_off_reason(cfg: Config) -> str:
    """Why this run has no audit ('' = it has one). Reported as the judge's validity note, never silent.

    The rollouts run on the judge actor's engine (a second engine would not fit beside it on a GPU),
    so they measure the student only when the judge is the student, as in the paper.
    """
    j = cfg.judge
    if j.search == "fixed_ratio" or cfg.run.method == "fixed_ratio":
        return "no judge (fixed_ratio)"
    if not j.audit_problems:
        return "judge.audit_problems=0"
    if j.model != cfg.align.model:
        return (
            f"judge.model={j.model!r} is not the student align.model={cfg.align.model!r}: the audit "
            "rolls the student out on the judge's engine"
        )
    return ""


def arm_sentences(prefix_sentences: int, num_judged: int) -> dict[str, int]:
    """Sentences kept in each arm (0 = the empty prefix)."""
    k = max(0, prefix_sentences)
    return {"cut": k, "shorter": max(0, k - 1), "full": num_judged, "empty": 0}


def audit_schema() -> tuple[Any, Any]:
    """Arrow types of the `audit` and `audit_rollouts` columns."""
    import pyarrow as pa

    i, big = pa.int32(), pa.int64()
    counts = pa.struct(
        [
            ("samples", i),
            *[(f"k_{a}", i) for a in ARMS],
            *[(f"correct_{a}", i) for a in ARMS],
            ("errors", i),
            ("prompt_tokens", big),
            ("generated_tokens", big),
        ]
    )
    rollout = pa.struct(
        [
            ("arm", pa.string()),
            ("k", i),
            ("sample_index", i),
            ("correct", pa.bool_()),
            ("reason", pa.string()),
            ("tokens", i),
            ("finish_reason", pa.string()),
            ("text", pa.string()),
        ]
    )
    return counts, pa.list_(rollout)


class Auditor:
    """Audit rollouts of judged rows on an engine that is already running (the judge actor's)."""

    def __init__(self, cfg: Config, engine: Any, engine_cfg: Any):
        import dataclasses

        from palign_ray.align import continuation_sampling
        from palign_ray.generation import Generator

        self.cfg = cfg
        sampling = continuation_sampling(
            dataclasses.replace(cfg.align, num_samples=cfg.judge.audit_samples)
        )
        self.gen = Generator(cfg.align.model, engine_cfg, sampling, "", cfg.run.seed, "audit")
        self.gen.engine = engine  # no second engine: the judge is the student

    async def audit(self, rows: list[dict[str, Any]], ends: dict[str, list[int]]) -> None:
        """Fill `audit` and `audit_rollouts` of `rows` in place (ends: sentence ends per problem_id)."""
        from palign_ray.align import continuation_prompt

        if not rows:
            return
        items, plan = [], []
        for r in rows:
            pid, cot = str(r[R.PROBLEM_ID]), r[R.COT]
            e = ends[pid]
            for arm, k in arm_sentences(r["prefix_sentences"], r["num_judged_sentences"]).items():
                prefix = cot[: e[k - 1]] if k else ""
                items.append(
                    {
                        R.PROBLEM_ID: pid + _SEP + arm,
                        R.PROMPT: continuation_prompt(r[R.QUESTION], prefix),
                    }
                )
                plan.append((r, arm, k, prefix))
        t0 = time.perf_counter()
        # One arm per engine call: all four at once put 4x the sequences in flight, which overflowed
        # the embedded engine's KV cache (46,592 tokens: 16 problems x 4 arms x 2 samples of ~500
        # tokens) into preemption and recompute. Items are ordered problem by problem, arm by arm.
        gens: list[dict[str, Any]] = [{} for _ in items]
        for a in range(len(ARMS)):
            idx = list(range(a, len(items), len(ARMS)))
            for i, g in zip(idx, await self.gen.generate([items[i] for i in idx]), strict=True):
                gens[i] = g
        t1 = time.perf_counter()
        # grading runs math-verify child processes: off the event loop, so the engine keeps busy
        graded = await asyncio.to_thread(self._grade, plan, gens)
        log.info(
            "judge audit: %d problems, %d continuations, %d tokens generated in %.1f s, graded in %.1f s",
            len(rows),
            len(items) * self.gen.sampling.n,
            sum(sum(g.get(R.NUM_GENERATED_TOKENS) or []) for g in gens),
            t1 - t0,
            time.perf_counter() - t1,
        )
        for r in rows:
            r[AUDIT], r[AUDIT_ROLLOUTS] = graded[str(r[R.PROBLEM_ID])]

    def _grade(
        self, plan: list[tuple[dict[str, Any], str, int, str]], gens: list[dict[str, Any]]
    ) -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
        from palign_ray.align import SAMPLE_INDEX, filter_continuations

        out: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
        for (row, arm, k, prefix), gen in zip(plan, gens, strict=True):
            pid = str(row[R.PROBLEM_ID])
            counts, rollouts = out.setdefault(
                pid, (_empty_counts(self.cfg.judge.audit_samples), [])
            )
            graded_row = {
                R.PROBLEM_ID: pid,
                R.QUESTION: row[R.QUESTION],
                R.ANSWER: row[R.ANSWER],
                R.PREFIX: prefix,
            }
            accepted, rejected = filter_continuations(
                graded_row, gen, self.cfg.align.grade_timeout_s, self.cfg.align.grader
            )
            counts[f"k_{arm}"] = k
            counts[f"correct_{arm}"] = len(accepted)
            counts["prompt_tokens"] += int(gen.get(R.NUM_PROMPT_TOKENS) or 0) - int(
                gen.get(R.NUM_CACHED_TOKENS) or 0
            )
            counts["generated_tokens"] += sum(gen.get(R.NUM_GENERATED_TOKENS) or [])
            reasons = {int(q[SAMPLE_INDEX]): str(q[R.REASON]) for q in rejected}
            if not gen.get(R.GENERATIONS):  # the prompt did not fit: the arm counts as all wrong
                counts["errors"] += 1
                rollouts.append(_rollout(arm, k, -1, False, reasons.get(-1, "error"), 0, "", ""))
            for i, text in enumerate(gen.get(R.GENERATIONS) or []):
                rollouts.append(
                    _rollout(
                        arm,
                        k,
                        i,
                        i not in reasons,
                        reasons.get(i, "correct"),
                        gen[R.NUM_GENERATED_TOKENS][i],
                        gen[R.FINISH_REASONS][i],
                        text,
                    )
                )
        return out


def _empty_counts(samples: int) -> dict[str, Any]:
    counts: dict[str, Any] = {"samples": samples, "errors": 0}
    counts.update({f"k_{a}": 0 for a in ARMS})
    counts.update({f"correct_{a}": 0 for a in ARMS})
    counts.update(prompt_tokens=0, generated_tokens=0)
    return counts


def _rollout(
    arm: str, k: int, index: int, correct: bool, reason: str, tokens: int, finish: str, text: str
) -> dict[str, Any]:
    return {
        "arm": arm,
        "k": k,
        "sample_index": index,
        "correct": correct,
        "reason": reason,
        "tokens": int(tokens),
        "finish_reason": str(finish),
        "text": text,
    }
