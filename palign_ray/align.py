"""Prefix alignment: the student continues each kept prefix (vLLM actor pool), then the Eq. 9 answer filter.

Run as: palign align --input prefixes.parquet --output aligned.parquet [key=value ...]
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

from palign_ray import records as R
from palign_ray.artifacts import quarantine_row, retention
from palign_ray.config import AlignConfig, Config, stage_engine
from palign_ray.fields import DUPLICATE
from palign_ray.grading import Grade
from palign_ray.streaming import RETENTION_KEYS, StreamJob, merge_summaries, part_rows, run_rows

log = logging.getLogger(__name__)

STAGE = "align"
ROLLOUT_K = "rollout_k"  # judge.rollout's columns, named here to keep this module free of the judge
ROLLOUT_CONTINUATIONS = "rollout_continuations"
SAMPLE_INDEX = "sample_index"
CONTINUATION_TOKENS = "continuation_tokens"
FINISH_REASON = "finish_reason"
EXTRACTED = "extracted"
REQUIRED = (R.PROBLEM_ID, R.QUESTION, R.ANSWER, R.PREFIX)
CARRIED = ("prefix_sentences", "num_sentences")  # judge columns worth keeping next to the record

# The authors' continuation prompt, verbatim (including the missing space before *Question*).
CONTINUATION_HEAD = (
    r"Please continue from the draft and solve the problem step by step, and put your final answer within \boxed{}. "
    "I will provide you with some prior knowledge as a draft to assist you in solving the question."
)


def continuation_prompt(question: str, prefix: str) -> str:
    """`{head}*Question*:{question}\\n*Prefix*:{prefix}` — concatenated, not str.format (LaTeX has braces)."""
    return CONTINUATION_HEAD + "*Question*:" + question + "\n*Prefix*:" + prefix


def check_prefix_rows(
    rows: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows fit to continue, and quarantine for the others, each field read the problems stage's way
    (`fields`): a missing prefix, question or gold (`missing_<field>`), a value of the wrong type
    (`wrong_type`, never stringified), a repeated problem_id. A kept row's gold is normalised
    (["5"] is 5), so Eq. 9 compares against the answer, not a list's text."""
    ok, bad, seen = [], [], set()
    for n, r in enumerate(rows):
        row, why = _read_prefix_row(r, n)
        pid = row[R.PROBLEM_ID]
        if why is None and pid in seen:
            why = (DUPLICATE, "a prefix row for this id came earlier")
        if why is not None:
            bad.append(quarantine_row(STAGE, pid, *why))
            continue
        seen.add(pid)
        ok.append(row)
    return ok, bad


def _read_prefix_row(row: dict[str, Any], n: int) -> tuple[dict[str, Any], tuple[str, str] | None]:
    """(the row with its id, prefix, question and gold read, or with its id only; (reason, detail) or None)."""
    from palign_ray.fields import gold_answer, read_id, read_text

    ident = read_id(row, R.PROBLEM_ID, n)
    out = {**row, R.PROBLEM_ID: ident.value}
    if ident.reason:
        return out, (ident.reason, ident.detail)
    for field, role in ((R.PREFIX, "prefix"), (R.QUESTION, "question")):
        text = read_text(row.get(field), field, role)
        if text.reason:
            return out, (text.reason, text.detail)
    gold = gold_answer(row.get(R.ANSWER), R.ANSWER, prose_is_solution=False)
    if gold.answer is None:
        return out, (gold.reason, gold.detail)
    return {**out, R.ANSWER: gold.answer}, None


def accepted_row(
    row: dict[str, Any], text: str, index: int, tokens: int, finish: str
) -> dict[str, Any]:
    out = {
        R.PROBLEM_ID: str(row[R.PROBLEM_ID]),
        R.QUESTION: row[R.QUESTION],
        R.ANSWER: str(row[R.ANSWER]),
        R.PREFIX: row[R.PREFIX],
        R.CONTINUATION: text,
        SAMPLE_INDEX: index,
        CONTINUATION_TOKENS: tokens,
        FINISH_REASON: finish,
    }
    for key in CARRIED:
        if key in row:
            out[key] = row[key]
    return out


def filter_continuations(
    row: dict[str, Any], gen: dict[str, Any] | None, timeout_s: float, grader: str = "boxed"
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Eq. 9 for one problem: accept continuations whose last boxed answer matches gold; quarantine the rest.

    Every rejected sample becomes one quarantine row with its own reason (wrong_answer,
    no_boxed_answer, grader_timeout, grader_error), sample_index and full continuation (see
    `rejected_row`), so a problem with no accepted continuation is fully accounted for by its
    quarantine rows.
    """
    from palign_ray.grading import grade

    pid = str(row[R.PROBLEM_ID])
    if gen is None or gen.get("error") or not gen.get(R.GENERATIONS):
        detail = (gen or {}).get("error") or "no generation row came back"
        reason = (
            "prompt_too_long" if str(detail).startswith("prompt_too_long") else "generation_failed"
        )
        return [], [quarantine_row(STAGE, pid, reason, str(detail), **{SAMPLE_INDEX: -1})]
    texts = list(gen[R.GENERATIONS])
    tokens = list(gen[R.NUM_GENERATED_TOKENS])
    finishes = list(gen[R.FINISH_REASONS])
    accepted, rejected = [], []
    for i, text in enumerate(texts):
        g = grade(text, str(row[R.ANSWER]), timeout_s, mode=grader)
        if g.correct:
            accepted.append(accepted_row(row, text, i, tokens[i], finishes[i]))
        else:
            rejected.append(rejected_row(row, g, text, i, tokens[i], finishes[i]))
    return accepted, rejected


def rejected_row(
    row: dict[str, Any], g: Grade, text: str, index: int, tokens: int, finish: str
) -> dict[str, Any]:
    """A quarantine row for one rejected continuation, its full text kept.

    `detail` is cut for reading; the whole continuation, its length, how it ended and the answer the
    grader saw stay beside it, so every Eq. 9 rejection can be re-graded or inspected per problem.
    """
    detail = f"extracted={g.extracted!r} gold={row[R.ANSWER]!r} finish={finish}: {text[-300:]}"
    return quarantine_row(
        STAGE,
        str(row[R.PROBLEM_ID]),
        g.reason,
        detail,
        **{
            SAMPLE_INDEX: index,
            R.CONTINUATION: text,
            CONTINUATION_TOKENS: tokens,
            FINISH_REASON: finish,
            EXTRACTED: g.extracted,
        },
    )


def filter_all(
    rows: list[dict[str, Any]], gen_rows: list[dict[str, Any]], cfg: AlignConfig
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Join generations on problem_id (never by order) and apply the filter to every problem."""
    by_id = {str(g[R.PROBLEM_ID]): g for g in gen_rows}
    out, quar = [], []
    for r in rows:
        acc, rej = filter_continuations(
            r, by_id.get(str(r[R.PROBLEM_ID])), cfg.grade_timeout_s, cfg.grader
        )
        out += acc
        quar += rej
    return out, quar


def continuation_sampling(a: AlignConfig) -> Any:
    """The continuation sampling (the paper's settings), shared with the judge audit's rollouts."""
    from palign_ray.engines.base import SamplingSpec

    return SamplingSpec(
        max_tokens=a.max_tokens,
        temperature=a.temperature,
        top_p=a.top_p,
        repetition_penalty=a.repetition_penalty,
        n=a.num_samples,
    )


class AlignWorker:
    """Inside an actor: the student continues each prefix (engine started on first use), then Eq. 9 filters."""

    def __init__(self, cfg: Config, on_engine_start: Any = None):
        from palign_ray.generation import Generator

        self.cfg = cfg
        engine, _ = stage_engine(cfg, "align")
        self.gen = Generator(
            cfg.align.model,
            engine,
            continuation_sampling(cfg.align),
            "",
            cfg.run.seed,
            STAGE,
            on_engine_start,
        )

    async def process(
        self, rows: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
        import asyncio

        from palign_ray.generation import generation_stats

        start = time.perf_counter()
        R.require_columns(
            STAGE, set().union(*(r.keys() for r in rows)) if rows else REQUIRED, REQUIRED
        )
        ok, quar = check_prefix_rows(rows)
        n = self.cfg.align.num_samples
        kept = {str(r[R.PROBLEM_ID]): c[:n] for r in ok if (c := reusable_continuations(r))}
        fresh = [r for r in ok if str(r[R.PROBLEM_ID]) not in kept]
        more = [r for r in ok if 0 < n - len(kept.get(str(r[R.PROBLEM_ID]), ())) < n]
        if fresh or more:
            self.gen.start()  # once per actor; kept out of the generation time below
        t_gen, started_at = time.perf_counter(), time.time()
        gen_rows = await self.gen.generate(_prompts(fresh))
        more_rows: list[dict[str, Any]] = []
        by_surplus: dict[int, list[dict[str, Any]]] = {}
        for r in more:
            by_surplus.setdefault(n - len(kept[str(r[R.PROBLEM_ID])]), []).append(r)
        for m, group in sorted(by_surplus.items()):
            more_rows += await self._generate_more(group, m)
        computed = gen_rows + more_rows
        extra = (
            generation_stats(computed, time.perf_counter() - t_gen, started_at) if computed else {}
        )
        gen_rows += [with_kept(pid, c, more_rows) for pid, c in kept.items()]
        # grading runs math-verify child processes: off the event loop, so other parts keep the engine busy
        out, rejected = await asyncio.to_thread(filter_all, ok, gen_rows, self.cfg.align)
        quar += rejected
        extra["num_continuations"] = len(out) + len(rejected)
        extra["num_accepted_continuations"] = len(out)
        # verdict=rollout: the judge's continuations from the cut, graded again here (the same grader)
        extra["num_reused_continuations"] = sum(len(c) for c in kept.values())
        extra["wall_s"] = round(time.perf_counter() - start, 2)
        extra["finish_reasons"] = dict(Counter(f for g in gen_rows for f in g[R.FINISH_REASONS]))
        return out, quar, retention(STAGE, len(rows), out, quar, **extra)

    async def _generate_more(self, rows: list[dict[str, Any]], m: int) -> list[dict[str, Any]]:
        """The samples align.num_samples asks for beyond the judge's kept ones (own seeds: salt 'align:more')."""
        if not rows or m <= 0:
            return []
        import dataclasses

        from palign_ray.generation import Generator

        g = Generator(
            self.cfg.align.model,
            self.gen.engine_cfg,
            dataclasses.replace(self.gen.sampling, n=m),
            "",
            self.cfg.run.seed,
            STAGE + ":more",
        )
        g.engine = self.gen.start()  # the same engine
        return await g.generate(_prompts(rows))

    def close(self) -> None:
        self.gen.close()


def _prompts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            R.PROBLEM_ID: str(r[R.PROBLEM_ID]),
            R.PROMPT: continuation_prompt(r[R.QUESTION], r[R.PREFIX]),
        }
        for r in rows
    ]


def reusable_continuations(row: dict[str, Any]) -> list[dict[str, Any]]:
    """A rollout judge's continuations from this row's cut (sample order), or [] when there are none.

    They are reused only when they were generated from exactly this prefix: the judge's kept cut
    (`rollout_k`) must be the row's cut (`prefix_sentences`).
    """
    conts = row.get(ROLLOUT_CONTINUATIONS)
    if not conts or row.get(ROLLOUT_K) is None or row.get(ROLLOUT_K) != row.get("prefix_sentences"):
        return []
    return sorted((dict(c) for c in conts), key=lambda c: int(c["sample_index"]))


def with_kept(
    pid: str, kept: list[dict[str, Any]], more_rows: list[dict[str, Any]]
) -> dict[str, Any]:
    """A generation row of the kept continuations, followed by any generated for this problem now."""
    from palign_ray.generation import ERROR

    extra = next((g for g in more_rows if str(g[R.PROBLEM_ID]) == pid), None) or {}
    return {
        R.PROBLEM_ID: pid,
        R.GENERATIONS: [c["text"] for c in kept] + list(extra.get(R.GENERATIONS) or []),
        R.FINISH_REASONS: [c["finish_reason"] for c in kept]
        + list(extra.get(R.FINISH_REASONS) or []),
        R.NUM_GENERATED_TOKENS: [int(c["tokens"]) for c in kept]
        + list(extra.get(R.NUM_GENERATED_TOKENS) or []),
        ERROR: "",
    }


def align_job(cfg: Config, num_rows: int = 0) -> StreamJob:
    """The align stage as a streaming job (one AlignWorker per actor)."""
    engine, ray_cfg = stage_engine(cfg, "align")
    return StreamJob(
        STAGE,
        AlignWorker,
        {"cfg": cfg},
        ray_cfg,
        part_rows(cfg.run.chunk_size, ray_cfg, num_rows),
        cpu_threads=engine.cpu_threads,
    )


def run_align(
    rows: list[dict[str, Any]], cfg: Config
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Prefix rows in memory → accepted (prefix, continuation) rows, quarantine, retention summary."""
    R.require_columns(STAGE, set().union(*(r.keys() for r in rows)) if rows else REQUIRED, REQUIRED)
    out, quar, parts, res = run_rows(align_job(cfg, len(rows)), rows)
    extra = {k: v for k, v in merge_summaries(parts).items() if k not in RETENTION_KEYS}
    return (
        out,
        quar,
        retention(STAGE, len(rows), out, quar, **extra, engine_starts=res.engine_starts),
    )
