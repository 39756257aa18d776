"""Batched sufficiency rounds: every unresolved problem's next probes go to the engine in ONE call, the
verdicts update the search states, and the loop ends when all are resolved.

All probes of a problem go to the same engine with token-id prompts that share the problem's prefix, so
vLLM's prefix cache serves the template head, question and CoT tokens of later rounds (see
palign_ray.judge.prompts). `RoundLoop` holds the logic without I/O; `run_rounds` (sync engine) and
`arun_rounds` (async engine, the stage's actors) drive it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

from palign_ray.config import EngineConfig, JudgeConfig
from palign_ray.engines.base import Engine, GenerationResult, SamplingSpec
from palign_ray.generation import derive_seed
from palign_ray.judge.calibration import anchor_ks
from palign_ray.judge.probes import calibrate, decide, judge_result, probe_spec
from palign_ray.judge.problem import Problem, prefix_text, prepare_rows, reserved_tokens
from palign_ray.judge.prompts import JudgePromptBuilder, VerdictTokens
from palign_ray.judge.rows import finished_rows

log = logging.getLogger(__name__)


def _round_probes(p: Problem, jcfg: JudgeConfig) -> tuple[list[int], list[int]]:
    """(anchor ks to judge now, search ks of the new round); anchors only before the first round."""
    anchors = (
        [k for k in anchor_ks(jcfg.calibration, p.num_judged) if k not in p.outcomes]
        if p.calib is None
        else []
    )
    return anchors, p.state.next_probes()


class RoundLoop:
    """The round loop without I/O: `next_call` gives the probes of the next engine call, `record` its results.

    Calibration anchors (empty prefix, full trace) go into the same engine call as round 1; a prefix
    judged before (e.g. the full-trace anchor) is reused, never sent twice. The sync (`run_rounds`) and
    async (`arun_rounds`) drivers differ only in how they call the engine.
    """

    def __init__(
        self,
        problems: Sequence[Problem],
        jcfg: JudgeConfig,
        vt: VerdictTokens,
        max_model_len: int,
        seed: int = 0,
        prober: Any = None,
    ):
        self.problems = problems
        self.prober = prober  # judge.rollout.RolloutProber for verdict=rollout, else None
        self.jcfg = (
            dataclasses.replace(jcfg, calibration="absolute") if jcfg.verdict != "logprob" else jcfg
        )
        self.vt, self.max_model_len, self.seed = vt, max_model_len, seed
        self.calls = 0
        self._plan: list[tuple[Problem, list[int], list[int]]] = []

    def next_call(
        self,
    ) -> tuple[list[tuple[Problem, int]], list[list[int]], list[SamplingSpec]] | None:
        """(probes, prompt ids, sampling specs) of the next engine call; None when every search is done."""
        while True:
            self._plan = [
                (p, *_round_probes(p, self.jcfg))
                for p in self.problems
                if not p.state.done and not p.engine_error
            ]
            if not self._plan:
                return None
            todo: list[tuple[Problem, int]] = []
            seen: set[tuple[int, int]] = set()
            for p, anchors, ks in self._plan:
                for k in (*anchors, *ks):
                    if k not in p.outcomes and (id(p), k) not in seen:
                        seen.add((id(p), k))
                        todo.append((p, k))
            if todo and self.prober is not None:
                prompts = [self.prober.ids(p.question, prefix_text(p, k)) for p, k in todo]
                specs = [
                    self.prober.spec(
                        len(ids),
                        self.max_model_len,
                        derive_seed(self.seed, p.problem_id, f"judge:{k}"),
                    )
                    for ids, (p, k) in zip(prompts, todo, strict=True)
                ]
                return todo, prompts, specs
            if todo:
                prompts = [p.prompt.ids(p.ends[k - 1] if k else 0) for p, k in todo]  # type: ignore[union-attr]
                specs = [
                    probe_spec(
                        self.jcfg,
                        self.vt,
                        len(ids),
                        self.max_model_len,
                        derive_seed(self.seed, p.problem_id, f"judge:{k}"),
                    )
                    for ids, (p, k) in zip(prompts, todo, strict=True)
                ]
                return todo, prompts, specs
            self._apply()  # every probe of this round was judged before (anchors): no engine call

    def record(
        self,
        todo: list[tuple[Problem, int]],
        prompts: list[list[int]],
        results: Sequence[GenerationResult] | None,
        error: str = "",
    ) -> None:
        """Results of one engine call (None: the call failed, and its problems stop with `engine_error`)."""
        self.calls += 1
        if results is None:
            for (
                p,
                _,
            ) in todo:  # these problems are out of the search; they leave as judge_engine_error
                p.engine_error = error or "engine call failed"
            return
        for (p, k), res in zip(todo, results, strict=True):
            o = (
                judge_result(res, self.jcfg, self.vt)
                if self.prober is None
                else self.prober.outcome(res, p.problem_id, p.question, p.answer, prefix_text(p, k))
            )
            o.update(
                prompt_tokens=res.num_prompt_tokens,
                cached_tokens=res.num_cached_tokens,
                generated_tokens=res.num_generated_tokens,
            )
            p.outcomes[k] = o
        self._apply()

    def _apply(self) -> None:
        jcfg = self.jcfg
        for p, anchors, ks in self._plan:
            for k in anchors:
                p.probes.append(dict(p.outcomes[k], round=p.state.round, k=k, anchor=True))
            if p.calib is None:
                calibrate(p, jcfg)
            assert p.calib is not None
            for k in ks:
                o = decide(p.outcomes[k], p.calib, jcfg)
                if k in anchor_ks(
                    jcfg.calibration, p.num_judged
                ):  # judged as an anchor: tokens counted there
                    o.update(prompt_tokens=0, cached_tokens=0, generated_tokens=0)
                o.update(round=p.state.round, k=k, anchor=False)
                p.probes.append(o)
                p.state.record(k, o["verdict"], o["score"], o["votes"])
            if p.calib_status:  # uncalibratable judge: stop searching, keep the full trace
                p.state.stop()


def run_rounds(
    engine: Engine,
    problems: Sequence[Problem],
    jcfg: JudgeConfig,
    vt: VerdictTokens,
    max_model_len: int,
    seed: int = 0,
    prober: Any = None,
) -> int:
    """Advance every problem's search to the end, one engine call per round; returns the calls made."""
    loop = RoundLoop(problems, jcfg, vt, max_model_len, seed, prober)
    while (call := loop.next_call()) is not None:
        todo, prompts, specs = call
        try:
            results: Sequence[GenerationResult] | None = engine.generate(prompts, specs)
            err = ""
        except Exception as e:  # noqa: BLE001 - the problems are retried (judge_engine_error), never guessed
            log.warning("judge engine call failed (%d probes): %r", len(prompts), e)
            results, err = None, f"engine_error: {e!r}"
        loop.record(todo, prompts, results, err)
    return loop.calls


def resident_tokens(p: Problem, jcfg: JudgeConfig, block_size: int) -> int:
    """A problem's footprint in the judge engine's KV cache while it is searched (judge.admission).

    Its probes share its prompt up to their cuts, so the longest one (the whole judged trace) bounds
    what they share; each sequence of a round adds its private last block, its verdict tail and
    what it generates (a rollout probe: `rollout_samples` continuations).
    """
    if p.prompt is None:
        return 0
    longest = p.prompt.num_tokens(p.ends[p.num_judged - 1])
    per_round = {"binary": 1, "kary": jcfg.kary_k}.get(jcfg.search, p.num_judged)
    sequences = per_round + len(anchor_ks(jcfg.calibration, p.num_judged))
    if jcfg.verdict == "rollout":
        sequences *= jcfg.rollout_samples
    elif jcfg.votes > 1:
        sequences *= jcfg.votes
    return longest + sequences * (block_size + len(p.prompt.tail) + reserved_tokens(jcfg))


async def arun_rounds(
    engine: Any,
    problems: Sequence[Problem],
    jcfg: JudgeConfig,
    vt: VerdictTokens,
    max_model_len: int,
    seed: int = 0,
    prober: Any = None,
    on_done: Callable[[Problem], None] | None = None,
) -> int:
    """`run_rounds` on an async engine: while this batch waits for a round, other batches' probes fill
    the engine. `on_done` is called once per problem as its search ends (admission frees its room)."""
    loop = RoundLoop(problems, jcfg, vt, max_model_len, seed, prober)
    searching = {id(p): p for p in problems}  # by identity: two problems may hold equal fields
    try:
        while (call := loop.next_call()) is not None:
            await _one_call(engine, loop, call, prober)
            if on_done is not None:
                for key, p in list(searching.items()):
                    if p.state.done or p.engine_error:
                        del searching[key]
                        on_done(p)
    finally:
        if on_done is not None:  # the rest (after an error, or done without a call) leave too
            for p in searching.values():
                on_done(p)
    return loop.calls


async def _one_call(engine: Any, loop: RoundLoop, call: Any, prober: Any) -> None:
    import asyncio

    todo, prompts, specs = call
    try:
        results: Sequence[GenerationResult] | None = await engine.agenerate(prompts, specs)
        err = ""
    except Exception as e:  # noqa: BLE001 - the problems are retried (judge_engine_error), never guessed
        log.warning("judge engine call failed (%d probes): %r", len(prompts), e)
        results, err = None, f"engine_error: {e!r}"
    if prober is not None:  # rollout verdicts grade with math-verify: off the event loop
        await asyncio.to_thread(loop.record, todo, prompts, results, err)
    else:
        loop.record(todo, prompts, results, err)


def judge_rows(
    engine: Engine | None,
    builder: JudgePromptBuilder | None,
    vt: VerdictTokens | None,
    rows: Sequence[dict[str, Any]],
    jcfg: JudgeConfig,
    engine_cfg: EngineConfig,
    judge_model: str,
    seed: int,
    prober: Any = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """Judge a batch of input rows together on a sync engine: (output rows, quarantine rows, engine calls)."""
    problems, quarantined = prepare_rows(rows, builder, jcfg, engine_cfg.max_model_len)
    calls = 0
    if problems and jcfg.search != "fixed_ratio":
        assert engine is not None and vt is not None
        calls = run_rounds(engine, problems, jcfg, vt, engine_cfg.max_model_len, seed, prober)
    out, failed = finished_rows(problems, jcfg, judge_model)
    return out, quarantined + failed, calls
