"""An OpenAI-compatible chat endpoint as the teacher (a hosted provider, or `vllm serve` elsewhere).

The rows it returns have the columns of `generation.Generator`'s, so the teacher stage grades and keeps
traces the same way whichever backend wrote them. One request per sample (providers differ on `n`),
each with a seed derived from problem_id, at most `max_concurrent_requests` in flight per actor.

Failures, and what becomes of the row (a problem fails when any of its samples fails):
- 429, 502, 503, 504 and connection errors are the service being unavailable: retried with exponential
  backoff and jitter (Retry-After honoured); when retries run out the row is `api_unavailable`, a
  retryable reason (never committed, redone by the stage's next pass or a rerun), so an outage loses
  nothing.
- other 5xx and timeouts are this request failing: retried the same way, then quarantined as
  `api_error` with the server's message.
- 400, 413, 422 are this request being wrong (too long for the model, say): quarantined as
  `api_error` at once.
- 401, 403, 404 are the configuration being wrong (key, model name, URL): the stage stops with that
  error instead of quarantining every problem.
The API key is read from the environment variable named by `teacher.api_key_env` inside the actor and
kept only in the request headers.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from palign_ray import records as R

UNAVAILABLE = "api_unavailable"  # retryable across passes (streaming.RETRYABLE_REASONS)
FAILED = "api_error"  # quarantined
UNAVAILABLE_STATUS = frozenset({429, 502, 503, 504})
FATAL_STATUS = frozenset({401, 403, 404})
ERROR_CHARS = 500  # of a server's error body kept in a quarantine detail
THINK = re.compile(r"<think>(.*?)</think>", re.S)


class ConfigurationError(RuntimeError):
    """The endpoint refuses every request (401/403/404): fail the stage, do not quarantine rows."""


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5
    base_s: float = 1.0
    max_s: float = 60.0


@dataclass
class Attempt:
    """How one request went: the reply body, or the failure class and message."""

    body: dict[str, Any] | None = None
    failure: str = ""  # "", UNAVAILABLE or FAILED
    error: str = ""
    retries: Counter[str] = field(
        default_factory=Counter
    )  # by cause: "429", "5xx", "connect", "timeout"


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """Seconds a `Retry-After` header asks for: an integer, or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_s(
    retry: int, policy: RetryPolicy, retry_after: float | None, rng: random.Random
) -> float:
    """Wait before retry number `retry` (0-based): base·2^retry with jitter in [½, 1], at least what
    Retry-After asks, never more than `policy.max_s`."""
    wait = policy.base_s * (2**retry) * (0.5 + rng.random() / 2)
    if retry_after is not None:
        wait = max(wait, retry_after)
    return min(wait, policy.max_s)


def classify(status: int) -> str:
    """The failure class of an HTTP status (see the module doc)."""
    if status in FATAL_STATUS:
        return "fatal"
    if status in UNAVAILABLE_STATUS:
        return UNAVAILABLE
    if status >= 500:
        return FAILED + ":retry"
    return FAILED


def trace_text(message: dict[str, Any]) -> str:
    """A chat message as one trace: separate reasoning (`reasoning_content`, or vLLM's `reasoning`)
    wrapped in think tags before the answer, as a local engine would have written it."""
    content = message.get("content") or ""
    reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
    if reasoning and not THINK.search(content):
        return f"<think>\n{reasoning.strip()}\n</think>\n\n{content.strip()}".rstrip()
    return content


def usage_counts(body: dict[str, Any]) -> tuple[int, int, int]:
    """(prompt, completion, cached) tokens of a reply's `usage`; 0 where the server gives none."""
    usage = body.get("usage") or {}
    details = usage.get("prompt_tokens_details") or {}
    return (
        int(usage.get("prompt_tokens") or 0),
        int(usage.get("completion_tokens") or 0),
        int(details.get("cached_tokens") or 0),
    )


def error_message(status: int, text: str) -> str:
    """`HTTP 500: <the server's message>` (the JSON error's message where there is one)."""
    import json

    msg = text
    try:
        err = json.loads(text).get("error", text)
        msg = err.get("message", str(err)) if isinstance(err, dict) else str(err)
    except (ValueError, AttributeError):
        pass
    return f"HTTP {status}: {msg.strip()[:ERROR_CHARS]}"


class ChatClient:
    """POST /chat/completions with bounded concurrency, timeouts and retries (one per actor)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        max_concurrent: int,
        timeout_s: float,
        policy: RetryPolicy,
        seed: int = 0,
    ):
        import httpx

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.policy = policy
        self.rng = random.Random(seed)
        self.client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            limits=httpx.Limits(max_connections=max_concurrent),
        )
        self.slots = asyncio.Semaphore(max_concurrent)

    async def post(self, payload: dict[str, Any]) -> Attempt:
        """One request to its end: a body, or the failure after retries (raises ConfigurationError)."""
        import httpx

        out = Attempt()
        for retry in range(self.policy.max_retries + 1):
            retry_after = None
            async with self.slots:
                try:
                    r = await self.client.post(self.url, json=payload)
                except httpx.ConnectTimeout as e:  # nobody answering the connection: as refused
                    cause, kind, msg = "connect", UNAVAILABLE, f"connection: {type(e).__name__}"
                except httpx.TimeoutException as e:  # connected, no reply in time: this request
                    cause, kind, msg = "timeout", FAILED, f"timeout: {type(e).__name__}"
                except httpx.TransportError as e:  # refused, reset, server gone mid-reply
                    cause, kind, msg = (
                        "connect",
                        UNAVAILABLE,
                        f"connection: {type(e).__name__}: {e}",
                    )
                else:
                    if r.status_code == 200:
                        out.body, out.failure, out.error = r.json(), "", ""
                        return out
                    kind = classify(r.status_code)
                    msg = error_message(r.status_code, r.text)
                    if kind == "fatal":
                        raise ConfigurationError(f"{self.url}: {msg}")
                    if kind == FAILED:  # this request is wrong: retrying will not help
                        out.failure, out.error = FAILED, msg
                        return out
                    kind = kind.removesuffix(":retry")
                    cause = "429" if r.status_code == 429 else "5xx"
                    retry_after = retry_after_s(r.headers.get("retry-after"))
            out.failure, out.error = kind, msg
            if retry == self.policy.max_retries:
                break
            out.retries[cause] += 1
            await asyncio.sleep(backoff_s(retry, self.policy, retry_after, self.rng))
        out.error = f"{out.error} (after {self.policy.max_retries + 1} attempts)"
        return out

    async def aclose(self) -> None:
        await self.client.aclose()


class APIGenerator:
    """`generation.Generator`'s interface over an OpenAI-compatible endpoint: items → generation rows."""

    def __init__(self, cfg: Any, seed: int = 0, salt: str = ""):
        from palign_ray.generation import derive_seed

        self.cfg, self.seed, self.salt = cfg, seed, salt
        self.derive_seed = derive_seed
        self.client: ChatClient | None = None

    def start(self) -> ChatClient:
        import os

        if self.client is None:
            t = self.cfg
            self.client = ChatClient(
                t.base_url,
                os.environ.get(t.api_key_env, "") if t.api_key_env else "",
                max_concurrent=t.max_concurrent_requests,
                timeout_s=t.request_timeout_s,
                policy=RetryPolicy(t.max_retries, t.retry_base_s, t.retry_max_s),
                seed=self.seed,
            )
        return self.client

    def payload(self, prompt: str, seed: int) -> dict[str, Any]:
        t = self.cfg
        msgs = [{"role": "system", "content": t.system_prompt}] if t.system_prompt else []
        return {
            "model": t.model,
            "messages": [*msgs, {"role": "user", "content": prompt}],
            "max_tokens": t.max_tokens,
            "temperature": t.temperature,
            "top_p": t.top_p,
            "seed": seed,
        }

    async def generate(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        client = self.start()
        n = self.cfg.num_samples

        async def one(item: dict[str, Any]) -> dict[str, Any]:
            pid = str(item[R.PROBLEM_ID])
            seeds = [self.derive_seed(self.seed, pid, f"{self.salt}:{i}") for i in range(n)]
            got = await asyncio.gather(
                *(client.post(self.payload(str(item[R.PROMPT]), s)) for s in seeds)
            )
            return api_row(pid, got)

        return list(await asyncio.gather(*(one(i) for i in items)))

    def close(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            try:
                asyncio.get_running_loop().create_task(client.aclose())
            except RuntimeError:
                asyncio.run(client.aclose())


def api_row(pid: str, attempts: list[Attempt]) -> dict[str, Any]:
    """A generation row from one problem's requests; `error` names the first failure's class."""
    from palign_ray.generation import ERROR

    retries: Counter[str] = Counter()
    for a in attempts:
        retries.update(a.retries)
    failed = [a for a in attempts if a.failure]
    row: dict[str, Any] = {
        R.PROBLEM_ID: pid,
        "api_requests": len(attempts) + sum(retries.values()),
        "api_retries": dict(retries),
        "api_failed_requests": len(failed),
    }
    if failed:
        # any sample failing fails the problem: a retryable outage wins, so the problem is redone
        worst = next((a for a in failed if a.failure == UNAVAILABLE), failed[0])
        return {
            **row,
            R.GENERATIONS: [],
            R.FINISH_REASONS: [],
            R.NUM_PROMPT_TOKENS: 0,
            R.NUM_CACHED_TOKENS: 0,
            R.NUM_GENERATED_TOKENS: [],
            ERROR: f"{worst.failure}: {worst.error}",
        }
    texts, finishes, prompt, completion, cached = [], [], 0, [], 0
    for a in attempts:
        body = a.body or {}
        choice = (body.get("choices") or [{}])[0]
        texts.append(trace_text(choice.get("message") or {}))
        finishes.append(str(choice.get("finish_reason") or ""))
        p, c, k = usage_counts(body)
        prompt, cached = prompt + p, cached + k
        completion.append(c)
    return {
        **row,
        R.GENERATIONS: texts,
        R.FINISH_REASONS: finishes,
        R.NUM_PROMPT_TOKENS: prompt,  # billed: summed over the problem's requests
        R.NUM_CACHED_TOKENS: cached,
        R.NUM_GENERATED_TOKENS: completion,
        ERROR: "",
    }


def api_cost(
    prompt: int,
    cached: int,
    completion: int,
    prices: tuple[float | None, float | None, float | None],
) -> float | None:
    """Dollars at (prompt, cached prompt, completion) prices per million tokens; cached tokens are
    billed at the cached price (the prompt price when it is unset); None without prompt and completion prices."""
    p_in, p_cached, p_out = prices
    if p_in is None or p_out is None:
        return None
    p_cached = p_in if p_cached is None else p_cached
    return ((prompt - cached) * p_in + cached * p_cached + completion * p_out) / 1e6
