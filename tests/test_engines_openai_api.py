"""The teacher's OpenAI-compatible backend: retries, failure classes, usage, and the stage over a scripted endpoint.

The real-server tests (`vllm serve` on the embedded model, faults injected) are in test_teacher_api_server.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import json
import random
import socket
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from palign_ray.config import Config, TeacherConfig
from palign_ray.engines.openai_api import (
    FAILED,
    UNAVAILABLE,
    APIGenerator,
    ChatClient,
    ConfigurationError,
    RetryPolicy,
    api_cost,
    api_row,
    backoff_s,
    retry_after_s,
    trace_text,
    usage_counts,
)
from tests.api_stub import StubAPI

FAST = RetryPolicy(max_retries=2, base_s=0.01, max_s=5.0)


def _client(url: str, policy: RetryPolicy = FAST, timeout_s: float = 5.0) -> ChatClient:
    return ChatClient(url, "", max_concurrent=4, timeout_s=timeout_s, policy=policy)


def _post(client: ChatClient, prompt: str = "Q"):
    async def go():
        try:
            return await client.post(
                {"model": "m", "messages": [{"role": "user", "content": prompt}]}
            )
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_retry_after_seconds_and_http_dates() -> None:
    now = time.time()
    assert retry_after_s("3") == 3.0
    date = email.utils.formatdate(now + 10, usegmt=True)
    assert 8.0 <= retry_after_s(date, now) <= 10.0
    assert retry_after_s(email.utils.formatdate(now - 60, usegmt=True), now) == 0.0
    assert (
        retry_after_s("soon") is None and retry_after_s(None) is None and retry_after_s("") is None
    )


def test_backoff_doubles_with_jitter_honours_retry_after_and_is_capped() -> None:
    rng = random.Random(0)
    p = RetryPolicy(max_retries=5, base_s=1.0, max_s=10.0)
    waits = [backoff_s(r, p, None, rng) for r in range(4)]
    for r, w in enumerate(waits):
        assert 0.5 * 2**r <= w <= 2**r
    assert backoff_s(0, p, 7.0, rng) == 7.0  # the server's Retry-After wins over a shorter backoff
    assert backoff_s(8, p, None, rng) == 10.0 and backoff_s(0, p, 3600.0, rng) == 10.0


def test_trace_text_wraps_separate_reasoning_in_think_tags() -> None:
    assert trace_text({"content": "A \\boxed{1}", "reasoning_content": "hmm"}) == (
        "<think>\nhmm\n</think>\n\nA \\boxed{1}"
    )
    assert trace_text({"content": "A", "reasoning": "vllm field"}).startswith("<think>\nvllm field")
    inline = "<think>r</think> A \\boxed{1}"
    assert trace_text({"content": inline, "reasoning_content": "r"}) == inline  # not doubled
    assert trace_text({"content": "plain"}) == "plain" and trace_text({"content": None}) == ""


def test_usage_counts_with_and_without_cached_details() -> None:
    body = {
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 4},
        }
    }
    assert usage_counts(body) == (10, 5, 4)
    assert usage_counts(
        {"usage": {"prompt_tokens": 3, "completion_tokens": 2, "prompt_tokens_details": None}}
    ) == (3, 2, 0)
    assert usage_counts({}) == (0, 0, 0)


def test_api_cost_bills_cached_tokens_at_their_price() -> None:
    assert api_cost(1_000_000, 400_000, 2_000_000, (1.0, 0.25, 4.0)) == pytest.approx(
        0.6 + 0.1 + 8.0
    )
    assert api_cost(1_000_000, 400_000, 0, (1.0, None, 4.0)) == pytest.approx(1.0)
    assert api_cost(10, 0, 10, (None, None, 4.0)) is None


def test_429_with_retry_after_then_500_then_ok_is_retried_counted_and_waits() -> None:
    with StubAPI(script={"Q": ["429:1", "500", "ok"]}) as api:
        got = _post(_client(api.base_url))
        times = [r["time"] for r in api.requests]
    assert got.failure == "" and got.body["choices"][0]["message"]["content"].endswith(
        "\\boxed{42}."
    )
    assert dict(got.retries) == {"429": 1, "5xx": 1} and len(times) == 3
    assert times[1] - times[0] >= 0.95  # Retry-After: 1 honoured, not the 10 ms backoff


def test_a_hanging_request_times_out_is_retried_then_fails_as_api_error() -> None:
    with StubAPI(script={"Q": ["hang:3", "hang:3"]}) as api:
        t0 = time.monotonic()
        got = _post(_client(api.base_url, RetryPolicy(1, 0.01, 1.0), timeout_s=0.5))
        took = time.monotonic() - t0
        n = len(api.requests)
    assert (
        got.failure == FAILED
        and got.error.startswith("timeout")
        and "after 2 attempts" in got.error
    )
    # Without the 0.5-s timeout the two 3-s hangs would take 6 s.
    assert dict(got.retries) == {"timeout": 1} and n == 2 and took < 5


def test_a_bad_request_fails_at_once_with_the_servers_message() -> None:
    with StubAPI(script={"Q": ["400"]}) as api:
        got = _post(_client(api.base_url))
        n = len(api.requests)
    assert got.failure == FAILED and got.error == "HTTP 400: stub says 400" and n == 1


def test_a_persistent_503_is_unavailable_and_401_stops_the_stage() -> None:
    with StubAPI(script={"Q": ["503"] * 3, "K": ["401"]}) as api:
        got = _post(_client(api.base_url))
        with pytest.raises(ConfigurationError, match="HTTP 401"):
            _post(_client(api.base_url), "K")
    assert got.failure == UNAVAILABLE and dict(got.retries) == {"5xx": 2}


def test_a_refused_connection_is_unavailable_after_retries() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    got = _post(_client(f"http://127.0.0.1:{port}/v1"))
    assert (
        got.failure == UNAVAILABLE
        and got.error.startswith("connection")
        and dict(got.retries) == {"connect": 2}
    )


def _teacher(url: str, **kw) -> TeacherConfig:
    base = {
        "backend": "openai",
        "base_url": url,
        "model": "stub-teacher",
        "num_samples": 2,
        "max_retries": 1,
        "retry_base_s": 0.01,
    }
    return dataclasses.replace(TeacherConfig(), **{**base, **kw})


def test_generator_sends_one_seeded_request_per_sample_with_the_key_from_env(monkeypatch) -> None:
    monkeypatch.setenv("STUB_KEY_VAR", "sk-test-secret")
    with StubAPI(reasoning_field="reasoning_content") as api:
        gen = APIGenerator(
            _teacher(api.base_url, api_key_env="STUB_KEY_VAR"), seed=3, salt="teacher"
        )
        rows = asyncio.run(gen.generate([{"problem_id": "p1", "prompt": "What is 6*7?"}]))
        again = asyncio.run(
            APIGenerator(_teacher(api.base_url), seed=3, salt="teacher").generate(
                [{"problem_id": "p1", "prompt": "What is 6*7?"}]
            )
        )
        reqs = api.requests
    (row,) = rows
    seeds = [r["payload"]["seed"] for r in reqs]
    # The two samples of one call are in flight together, so they may reach the server in either order.
    assert (
        len(reqs) == 4 and sorted(seeds[:2]) == sorted(seeds[2:]) and seeds[0] != seeds[1]
    )  # per sample, reproducible
    assert reqs[0]["headers"]["Authorization"] == "Bearer sk-test-secret"
    assert "Authorization" not in reqs[2]["headers"]  # OPENAI_API_KEY unset here: no header
    assert reqs[0]["payload"]["model"] == "stub-teacher" and reqs[0]["payload"]["max_tokens"] == 512
    assert row["error"] == "" and row["generations"][0].startswith("<think>\nThinking about seed")
    assert (
        row["num_prompt_tokens"] == 2 * 3
        and row["num_cached_tokens"] == 4
        and row["num_generated_tokens"] == [7, 7]
    )
    assert row["api_requests"] == 2 and "sk-test-secret" not in json.dumps(rows + again)


def test_api_row_lets_an_outage_win_so_the_problem_is_redone() -> None:
    from palign_ray.engines.openai_api import Attempt

    row = api_row(
        "p",
        [
            Attempt(failure=FAILED, error="HTTP 500: x"),
            Attempt(failure=UNAVAILABLE, error="connection: refused"),
        ],
    )
    assert (
        row["error"].startswith("api_unavailable: connection") and row["api_failed_requests"] == 2
    )


def test_checks_name_what_an_openai_teacher_lacks() -> None:
    from palign_ray.checks import plan_problems

    cfg = dataclasses.replace(
        Config(), teacher=dataclasses.replace(TeacherConfig(), backend="openai")
    )
    msgs = "\n".join(plan_problems(cfg, ["teacher"]))
    assert "teacher.base_url=''" in msgs and "teacher.model='default'" in msgs
    ok = dataclasses.replace(cfg, teacher=_teacher("http://localhost:8000/v1", retry_max_s=0.001))
    assert plan_problems(ok, ["teacher"]) == [
        "teacher: teacher.retry_max_s=0.001: must be >= retry_base_s (0.01)"
    ]


@pytest.mark.timeout(300)
def test_teacher_stage_over_a_scripted_endpoint(ray_session, tmp_path: Path, monkeypatch) -> None:
    """The teacher CLI through Ray actors: right answers kept, a persistent 500 quarantined with the
    server's error, a 429 retried, usage in rows and summary, the key nowhere on disk."""
    from palign_ray.builtin import builtin_problems
    from palign_ray.cli import main

    probs = builtin_problems(4, 0)
    gold = {p["question"]: str(p["answer"]) for p in probs}
    answer_of = lambda prompt: next((a for q, a in gold.items() if q in prompt), "?")  # noqa: E731
    monkeypatch.setenv("STUB_KEY_VAR", "sk-never-on-disk")
    script = {probs[1]["question"]: ["500"] * 9, probs[2]["question"]: ["429:0"]}
    with StubAPI(answer_of, script) as api:
        out = tmp_path / "traces.parquet"
        rc = main(
            [
                "teacher",
                "--output",
                str(out),
                "problems.num_problems=4",
                "teacher.backend=openai",
                f"teacher.base_url={api.base_url}",
                "teacher.model=stub-teacher",
                "teacher.api_key_env=STUB_KEY_VAR",
                "teacher.num_samples=1",
                "teacher.max_retries=2",
                "teacher.retry_base_s=0.01",
            ]
        )
    traces = pq.read_table(out).to_pylist()
    quar = pq.read_table(tmp_path / "traces.quarantine.parquet").to_pylist()
    summary = json.loads((tmp_path / "traces.summary.json").read_text())
    assert rc == 0 and {r["problem_id"] for r in traces} == {
        probs[i]["problem_id"] for i in (0, 2, 3)
    }
    (q,) = quar
    assert q["problem_id"] == probs[1]["problem_id"] and q["reason"] == "api_error"
    assert "HTTP 500: stub says 500 (after 3 attempts)" in q["detail"]
    assert all(
        r["teacher_generated_tokens"] == 7 and r["teacher_prompt_tokens"] > 0 for r in traces
    )
    assert summary["api_requests"] == 4 + 2 + 1 and summary["api_retries"] == {"5xx": 2, "429": 1}
    assert summary["api_failed_requests"] == 1 and summary["engine_starts"] == 0
    on_disk = "".join(p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file())
    assert "sk-never-on-disk" not in on_disk


def test_report_usage_table_sums_parts_and_prices_them(tmp_path: Path) -> None:
    from palign_ray.artifacts import StageDir
    from palign_ray.report import api_usage_table

    sd = StageDir(tmp_path / "teacher")
    for i, retries in enumerate(({"429": 2}, {"429": 1, "timeout": 1})):
        summary = {"api_requests": 10 + i, "api_retries": retries, "api_failed_requests": i}
        summary |= {
            "prompt_tokens": 1_000_000,
            "cached_tokens": 500_000,
            "generated_tokens": 1_000_000,
        }
        sd.write_part([{"problem_id": f"p{i}"}], [], summary=summary, num_input=1)
    t = _teacher(
        "http://h/v1",
        price_prompt_per_mtok=1.0,
        price_cached_per_mtok=0.5,
        price_completion_per_mtok=2.0,
    )
    table = "\n".join(api_usage_table(tmp_path, t))
    # 2M prompt (1M cached at 0.5, 1M at 1.0) + 2M completion at 2.0 = 1.5 + 4.0
    assert "| 21 | 429: 3, timeout: 1 | 1 | 2000000 | 1000000 | 2000000 | $5.50 |" in table
    assert "no cost shown" in "\n".join(api_usage_table(tmp_path, _teacher("http://h/v1")))
    assert api_usage_table(tmp_path / "none", t) == []


def test_the_backend_key_leaves_earlier_teacher_hashes_alone() -> None:
    """teacher.backend came after runs were made: at its default it is not hashed (fb027c5a6137348a is
    the teacher+engine hash of the default config at af35ad3, before the key existed)."""
    from palign_ray.config import config_hash

    cfg = Config()
    assert config_hash(cfg.teacher, cfg.engine) == "fb027c5a6137348a"
    api = dataclasses.replace(cfg.teacher, backend="openai")
    assert config_hash(api, cfg.engine) != "fb027c5a6137348a"
    # where and how requests go is not what they compute
    moved = dataclasses.replace(api, base_url="http://elsewhere/v1", max_concurrent_requests=3)
    assert config_hash(moved, cfg.engine) == config_hash(api, cfg.engine)
