"""KV-aware admission (issue 29.3): a judge actor keeps in flight only the problems whose longest
probes fit its engine's KV cache. Pure asyncio and a scripted engine; the measurement on real traces
is bench/kv_admission.py."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import pytest

from palign_ray.admission import KVAdmission, fitting_batches
from palign_ray.config import Config, JudgeConfig, RayConfig
from palign_ray.engines.fake import FakeEngine
from palign_ray.judge.contract import check_judge_config
from palign_ray.judge.probes import judge_tools
from palign_ray.judge.problem import prepare_rows
from palign_ray.judge.rounds import resident_tokens
from palign_ray.judge.stage import JudgeWorker, kv_admission
from tests.judge_helpers import rows_for
from tests.test_judge_rounds import logprob_judge


def test_admission_is_first_come_first_served_and_never_over_budget() -> None:
    async def scenario() -> tuple[list[str], KVAdmission]:
        kv = KVAdmission(100)
        order: list[str] = []

        async def job(name: str, tokens: int, hold: float) -> None:
            await kv.acquire(tokens)
            order.append(name)
            assert kv.used <= kv.capacity or kv.used == tokens  # alone when over budget
            await asyncio.sleep(hold)
            kv.release(tokens)

        await asyncio.gather(
            job("a", 60, 0.02), job("b", 60, 0.01), job("c", 30, 0.01), job("huge", 150, 0.01)
        )
        return order, kv

    order, kv = asyncio.run(scenario())
    # b waits for a; c (which would fit beside a) waits behind b: no overtaking, so no starvation
    assert order == ["a", "b", "c", "huge"]
    assert kv.used == 0 and kv.peak == 150 and kv.waits == 3


def test_batches_fit_the_budget_and_keep_the_input_order() -> None:
    assert fitting_batches([40, 40, 40, 10], 100, 16) == [[0, 1], [2, 3]]
    assert fitting_batches([40, 40, 40], 1000, 2) == [[0, 1], [2]]
    assert fitting_batches([150, 10], 100, 16) == [[0], [1]]  # over budget: on its own


def test_a_problems_footprint_is_its_longest_probe_plus_each_sequence(tokenizer) -> None:
    jcfg = JudgeConfig()
    builder, _ = judge_tools(tokenizer, jcfg)
    (p,), bad = prepare_rows(rows_for([(12, 5)]), builder, jcfg, 2048)
    assert not bad
    longest = p.prompt.num_tokens(p.ends[-1])
    per_sequence = 16 + len(p.prompt.tail) + 1  # a private block, the verdict tail, one token
    assert jcfg.search == "binary" and jcfg.calibration == "absolute"
    assert resident_tokens(p, jcfg, 16) == longest + per_sequence  # one probe a round
    contextual = dataclasses.replace(jcfg, calibration="contextual")  # + the empty-reasoning anchor
    assert resident_tokens(p, contextual, 16) == longest + 2 * per_sequence
    kary = dataclasses.replace(jcfg, search="kary", kary_k=3)
    assert resident_tokens(p, kary, 16) == longest + 3 * per_sequence


def test_kv_admission_share_is_checked() -> None:
    with pytest.raises(ValueError, match="judge.kv_admission"):
        check_judge_config(JudgeConfig(kv_admission=1.5))


def _worker(tokenizer, kv: tuple[int, int] | None, share: float) -> tuple[JudgeWorker, FakeEngine]:
    cfg = Config(judge=JudgeConfig(kv_admission=share), ray=RayConfig(batch_size=2, num_actors=1))
    worker = JudgeWorker(cfg)
    engine = FakeEngine(logprob_judge(tokenizer), tokenizer, kv=kv)
    worker.engine, worker.tools = engine, judge_tools(tokenizer, worker.jcfg)
    worker.admission, worker.kv_block, worker.admission_note = kv_admission(engine, share)
    return worker, engine


def test_the_worker_admits_batches_within_the_engines_kv_cache(tokenizer) -> None:
    rows = rows_for([(12, 5), (7, 1), (20, 20), (3, 9), (9, 4), (14, 7), (5, 2), (8, 8)])
    free, _ = _worker(tokenizer, None, 0.9)
    assert free.admission is None and "reports no KV capacity" in free.admission_note
    expected, _, _ = asyncio.run(free.process(rows))

    tight, engine = _worker(tokenizer, (1200, 16), 0.9)
    resident: list[int] = []
    real = engine.agenerate

    async def watched(prompts, params):  # the reservation whenever the engine is called
        resident.append(tight.admission.used)
        await asyncio.sleep(0)  # a real engine answers later: other batches run meanwhile
        return await real(prompts, params)

    engine.agenerate = watched  # type: ignore[method-assign]
    out, bad, summary = asyncio.run(tight.process(rows))
    same = json.dumps(out, sort_keys=True, default=str) == json.dumps(
        expected, sort_keys=True, default=str
    )  # NaN-safe: calibration columns hold NaN under absolute calibration
    assert not bad and same  # admission decides when, never what
    assert tight.admission.capacity == 1080 and max(resident) <= 1080
    assert tight.admission.waits > 0 and tight.admission.used == 0  # all released
    assert summary["kv_admission"] == "1080 of 1200 KV tokens (share 0.9)"
    off, _ = _worker(tokenizer, (1200, 16), 0.0)
    assert off.admission is None and off.admission_note == "off (judge.kv_admission=0)"


def test_generation_requests_start_only_when_their_tokens_fit(tokenizer) -> None:
    """Teacher, align, eval: prompt + max_tokens per sample reserved, so nothing is preempted."""
    from palign_ray.config import EngineConfig
    from palign_ray.engines.base import SamplingSpec
    from palign_ray.generation import Generator, generation_admission

    items = [{"problem_id": f"p{i}", "prompt": f"What is {i} + {i}?"} for i in range(12)]
    sampling = SamplingSpec(max_tokens=40, n=2)

    def run(kv: tuple[int, int] | None, engine_cfg: EngineConfig) -> tuple[list, list[int], Any]:
        gen = Generator("default", engine_cfg, sampling)
        engine = FakeEngine(lambda ids, sp, i: (f"answer {len(ids)} {i}", None), tokenizer, kv=kv)
        gen.engine, gen.admission = engine, generation_admission(engine, engine_cfg)
        reserved: list[int] = []
        real = engine.agenerate

        async def watched(prompts, params):
            reserved.append(gen.admission.used if gen.admission else 0)
            await asyncio.sleep(0)
            return await real(prompts, params)

        engine.agenerate = watched  # type: ignore[method-assign]
        return asyncio.run(gen.generate(items)), reserved, gen.admission

    free_rows, _, none = run(None, EngineConfig())
    assert none is None
    rows, reserved, admission = run((400, 16), EngineConfig())
    assert rows == free_rows  # the same rows, in input order
    assert len(reserved) == len(items) and max(reserved) <= 400 and admission.waits > 0
    assert admission.used == 0
    _, _, user_bound = run((400, 16), EngineConfig(max_num_seqs=8))
    assert user_bound is None  # engine.max_num_seqs set: the user's bound stands
