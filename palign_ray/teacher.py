"""Teacher stage: long-CoT samples per problem on a vLLM actor pool, graded, one trace kept; or ingest given traces.

Run as: palign teacher --output traces.parquet [--input problems.jsonl] [key=value ...]
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from palign_ray import records as R
from palign_ray.artifacts import quarantine_row, retention
from palign_ray.config import Config, TeacherConfig, stage_engine
from palign_ray.generation import timed_generate
from palign_ray.records import (
    AFTER_THINK,
    DECISIVE_CHAR_END,
    DECISIVE_SENTENCE,
    GROUP,
    SOLUTION,
    TEMPLATE,
    THINK_SPLIT,
    TRACE_FORMAT,
)
from palign_ray.streaming import RETENTION_KEYS, StreamJob, merge_summaries, part_rows, run_rows

log = logging.getLogger(__name__)

STAGE = "teacher"
# The paper's instruction, glued to the problem exactly as in its evaluation prompt (no separator).
INSTRUCTION = r"Please reason step by step, and put your final answer within \boxed{}."
NUM_SAMPLES = "num_samples"
NUM_CORRECT = "num_correct"
COT_TOKENS = "cot_tokens"
TEACHER_MODEL = "teacher_model"
TRACE_SOURCE = R.TRACE_SOURCE  # "teacher" | "reference" | "ingested"
# Tokens the teacher spent on the problem, over all its samples (billed usage with backend=openai).
USAGE = ("teacher_prompt_tokens", "teacher_cached_tokens", "teacher_generated_tokens")
API_REASONS = (
    "api_unavailable",
    "api_error",
)  # failure classes of backend=openai (engines/openai_api.py)
SAMPLE_REASONS = ("wrong_answer", "no_boxed_answer", "grader_timeout", "grader_error")
CARRIED = (
    SOLUTION,
    DECISIVE_SENTENCE,
    DECISIVE_CHAR_END,
    TEMPLATE,  # kept for later checks (issue 10)
    GROUP,
    TRACE_FORMAT,
    THINK_SPLIT,
    AFTER_THINK,
)  # how an ingested trace was stored and split (issue 18)


def teacher_prompt(question: str) -> str:
    """The user turn sent to the teacher: the paper's instruction + the question (evaluation's form)."""
    return INSTRUCTION + question


@dataclass(frozen=True)
class Sample:
    """One graded teacher sample."""

    index: int
    text: str
    num_tokens: int
    finish_reason: str
    correct: bool
    reason: str


def grade_samples(
    texts: list[str], num_tokens: list[int], finish_reasons: list[str], gold: str, timeout_s: float
) -> list[Sample]:
    """Grade every sample against gold with grading.grade (last boxed answer)."""
    from palign_ray.grading import grade

    out = []
    for i, text in enumerate(texts):
        g = grade(text, gold, timeout_s)
        tokens = num_tokens[i] if i < len(num_tokens) else -1
        finish = finish_reasons[i] if i < len(finish_reasons) else ""
        out.append(Sample(i, text, tokens, finish, g.correct, g.reason))
    return out


def select_trace(samples: list[Sample], policy: str) -> Sample | None:
    """The kept trace: shortest/longest correct (by tokens, ties → lower index) or the first correct."""
    correct = [s for s in samples if s.correct]
    if not correct:
        return None
    if policy == "first_correct":
        return correct[0]
    if policy == "shortest_correct":
        return min(correct, key=lambda s: (s.num_tokens, s.index))
    if policy == "longest_correct":
        return max(correct, key=lambda s: (s.num_tokens, -s.index))
    raise ValueError(
        f"teacher.selection={policy!r} is not one of shortest_correct, longest_correct, first_correct"
    )


def reason_counts(samples: list[Sample]) -> str:
    """'4 wrong_answer, 0 no_boxed_answer' (+ any timeout/error counts that occurred)."""
    counts = Counter(s.reason for s in samples if not s.correct)
    shown = [r for r in SAMPLE_REASONS if counts[r] or r in ("wrong_answer", "no_boxed_answer")]
    return ", ".join(f"{counts[r]} {r}" for r in shown)


def strip_think(text: str) -> str:
    """The reasoning of a trace with think tags: inside <think>...</think>, else tags removed.

    A trace with only a closing tag (templates that open <think> in the prompt) keeps what precedes it.
    One rule with the problems stage's load-time split (`fields.split_think`), which also keeps the
    part after `</think>`; here it is a no-op on rows that were split there.
    """
    from palign_ray.fields import split_think

    return split_think(text).reasoning.strip()


def reference_trace(solution: str, answer: str) -> str:
    """A worked solution as a trace: GSM8K's <<calc>> annotations dropped, `#### N` as a boxed final line."""
    text = re.sub(r"<<[^<>]*>>", "", solution).strip()
    if "####" in text:
        text = (
            text.rsplit("####", 1)[0].rstrip() + "\n" + f"The final answer is \\boxed{{{answer}}}."
        )
    return text


def _base_row(problem: dict[str, Any]) -> dict[str, Any]:
    row = {
        R.PROBLEM_ID: str(problem[R.PROBLEM_ID]),
        R.QUESTION: problem[R.QUESTION],
        R.ANSWER: str(problem[R.ANSWER]),
    }
    for key in CARRIED:
        row[key] = problem.get(key)
    return row


def trace_row(
    problem: dict[str, Any],
    cot: str,
    num_samples: int,
    num_correct: int,
    cot_tokens: int,
    model: str,
    source: str,
    usage: tuple[int, int, int] = (0, 0, 0),
) -> dict[str, Any]:
    return {
        **_base_row(problem),
        R.COT: cot,
        NUM_SAMPLES: num_samples,
        NUM_CORRECT: num_correct,
        COT_TOKENS: cot_tokens,
        TEACHER_MODEL: model,
        TRACE_SOURCE: source,
        **dict(zip(USAGE, usage, strict=True)),
    }


def row_usage(gen: dict[str, Any]) -> tuple[int, int, int]:
    """(prompt, cached, generated) tokens of one problem's generation row."""
    return (
        int(gen.get(R.NUM_PROMPT_TOKENS) or 0),
        int(gen.get(R.NUM_CACHED_TOKENS) or 0),
        sum(gen.get(R.NUM_GENERATED_TOKENS) or []),
    )


def failure_reason(error: str) -> str:
    """The quarantine reason of a failed generation row: the API's failure class, else generation_failed."""
    head = error.split(":", 1)[0]
    return head if head in API_REASONS else "generation_failed"


def select_rows(
    problems: list[dict[str, Any]], gen_rows: list[dict[str, Any]], cfg: TeacherConfig
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Counter[str]]:
    """Join generations to problems on problem_id, grade, select; quarantine problems with no correct trace."""
    by_id = {str(g[R.PROBLEM_ID]): g for g in gen_rows}
    out, quar = [], []
    sample_reasons: Counter[str] = Counter()
    for p in problems:
        pid = str(p[R.PROBLEM_ID])
        g = by_id.get(pid)
        if g is None or g.get("error"):
            error = g.get("error", "") if g else "no generation row came back"
            quar.append(quarantine_row(STAGE, pid, failure_reason(error), error))
            continue
        samples = grade_samples(
            list(g[R.GENERATIONS]),
            list(g[R.NUM_GENERATED_TOKENS]),
            list(g[R.FINISH_REASONS]),
            str(p[R.ANSWER]),
            cfg.grade_timeout_s,
        )
        sample_reasons.update(s.reason for s in samples)
        best = select_trace(samples, cfg.selection)
        num_correct = sum(s.correct for s in samples)
        if best is not None:
            out.append(
                trace_row(
                    p,
                    best.text,
                    len(samples),
                    num_correct,
                    best.num_tokens,
                    cfg.model,
                    "teacher",
                    row_usage(g),
                )
            )
        elif (
            cfg.use_reference_solutions and isinstance(p.get(SOLUTION), str) and p[SOLUTION].strip()
        ):
            out.append(
                trace_row(
                    p,
                    reference_trace(p[SOLUTION], str(p[R.ANSWER])),
                    len(samples),
                    0,
                    -1,
                    cfg.model,
                    "reference",
                    row_usage(g),
                )
            )
        else:
            quar.append(
                quarantine_row(
                    STAGE,
                    pid,
                    "no_correct_sample",
                    f"no_correct_sample: {reason_counts(samples)}",
                    num_samples=len(samples),
                )
            )
    return out, quar, sample_reasons


def ingest_traces(
    problems: list[dict[str, Any]], model: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows that already carry a trace (`cot`, from problems.trace_field) → trace rows; think tags handled.

    Ingested traces are kept whether or not they box the gold answer (s1K thinking trajectories
    usually end without one); num_correct records 1 when the trace's last boxed answer matches.
    """
    from palign_ray.grading import grade

    out, quar = [], []
    for p in problems:
        cot = strip_think(str(p.get(R.COT) or ""))
        if not cot:
            quar.append(
                quarantine_row(
                    STAGE,
                    str(p[R.PROBLEM_ID]),
                    "empty_trace",
                    "trace is empty after removing think tags",
                )
            )
            continue
        correct = grade(cot, str(p[R.ANSWER])).correct
        out.append(trace_row(p, cot, 1, int(correct), -1, model, "ingested"))
    return out, quar


class TeacherWorker:
    """Inside an actor: ingest rows that carry a trace, generate and grade the others (engine started on first use)."""

    def __init__(self, cfg: Config, on_engine_start: Any = None):
        from palign_ray.engines.base import SamplingSpec
        from palign_ray.engines.openai_api import APIGenerator
        from palign_ray.generation import Generator

        t = cfg.teacher
        self.cfg = cfg
        self.gen: Generator | APIGenerator
        if t.backend == "openai":
            self.gen = APIGenerator(t, cfg.run.seed, STAGE)
            return
        sampling = SamplingSpec(
            max_tokens=t.max_tokens, temperature=t.temperature, top_p=t.top_p, n=t.num_samples
        )
        engine, _ = stage_engine(cfg, "teacher")
        self.gen = Generator(
            t.model, engine, sampling, t.system_prompt, cfg.run.seed, STAGE, on_engine_start
        )

    async def process(
        self, rows: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
        import asyncio

        start = time.perf_counter()
        given = [r for r in rows if r.get(R.COT)]
        todo = [r for r in rows if not r.get(R.COT)]
        out, quar = (
            await asyncio.to_thread(
                ingest_traces, given, f"ingested:{self.cfg.problems.trace_field or R.COT}"
            )
            if given
            else ([], [])
        )
        extra: dict[str, Any] = {}
        if todo:
            gen_rows, extra = await timed_generate(
                self.gen,
                [
                    {R.PROBLEM_ID: str(p[R.PROBLEM_ID]), R.PROMPT: teacher_prompt(p[R.QUESTION])}
                    for p in todo
                ],
            )
            if self.cfg.teacher.backend == "openai":
                extra.update(api_stats(gen_rows))
            # grading runs math-verify child processes: off the event loop, so other parts keep the engine busy
            kept, rejected, sample_reasons = await asyncio.to_thread(
                select_rows, todo, gen_rows, self.cfg.teacher
            )
            out, quar = out + kept, quar + rejected
            extra["sample_reasons"] = dict(sample_reasons)
            extra["num_samples_total"] = sum(sample_reasons.values())
        extra["trace_source"] = dict(Counter(r[TRACE_SOURCE] for r in out))
        extra["wall_s"] = round(time.perf_counter() - start, 2)
        return out, quar, retention(STAGE, len(rows), out, quar, **extra)

    def close(self) -> None:
        self.gen.close()


def api_stats(gen_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Requests, retries by cause and failed requests of a part's API generation rows."""
    retries: Counter[str] = Counter()
    for g in gen_rows:
        retries.update(g.get("api_retries") or {})
    return {
        "api_requests": sum(int(g.get("api_requests") or 0) for g in gen_rows),
        "api_retries": dict(retries),
        "api_failed_requests": sum(int(g.get("api_failed_requests") or 0) for g in gen_rows),
    }


def teacher_job(cfg: Config, num_rows: int = 0) -> StreamJob:
    """The teacher stage as a streaming job (one TeacherWorker per actor)."""
    engine, ray_cfg = stage_engine(cfg, "teacher")
    threads = engine.cpu_threads
    if cfg.teacher.backend == "openai":  # the actors only send requests: no GPU, no engine threads
        ray_cfg, threads = dataclasses.replace(ray_cfg, num_gpus_per_actor=0.0), None
    return StreamJob(
        STAGE,
        TeacherWorker,
        {"cfg": cfg},
        ray_cfg,
        part_rows(cfg.run.chunk_size, ray_cfg, num_rows),
        cpu_threads=threads,
    )


def run_teacher(
    rows: list[dict[str, Any]], cfg: Config
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Problems in memory → one trace per problem (generated, or ingested where rows carry `cot`) + quarantine + summary."""
    out, quar, parts, res = run_rows(teacher_job(cfg, len(rows)), rows)
    extra = {k: v for k, v in merge_summaries(parts).items() if k not in RETENTION_KEYS}
    return (
        out,
        quar,
        retention(STAGE, len(rows), out, quar, **extra, engine_starts=res.engine_starts),
    )
