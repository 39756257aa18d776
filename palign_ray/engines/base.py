"""The engine contract every stage codes against (no vllm/torch imports here)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class SamplingSpec:
    """What to sample; mirrors the subset of vLLM's SamplingParams the pipeline uses."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    n: int = 1
    seed: int | None = None
    logprobs: int | None = None  # top-k logprobs per generated token
    allowed_token_ids: tuple[int, ...] | None = None  # restrict the vocabulary (verdict probes)
    # Return logprobs of exactly these tokens at every generated step (raw model distribution),
    # whatever their rank: what a verdict probe needs for p([ENOUGH]) vs p([NOT_ENOUGH]).
    logprob_token_ids: tuple[int, ...] | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Completion:
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str  # "stop" | "length" | "abort" ...
    # Per generated token: {token_id: logprob} for the returned top-k (None unless requested).
    logprobs: tuple[dict[int, float], ...] | None = None


@dataclass(frozen=True)
class GenerationResult:
    completions: tuple[Completion, ...]
    num_prompt_tokens: int
    num_cached_tokens: int  # prompt tokens served from the prefix cache

    @property
    def num_generated_tokens(self) -> int:
        return sum(len(c.token_ids) for c in self.completions)


@dataclass
class EngineStats:
    """Running token counts of one engine (prefilled = prompt tokens, cached ⊆ prefilled)."""

    num_calls: int = 0
    num_requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, results: Sequence[GenerationResult]) -> None:
        self.num_calls += 1
        self.num_requests += len(results)
        for r in results:
            self.prompt_tokens += r.num_prompt_tokens
            self.cached_tokens += r.num_cached_tokens
            self.generated_tokens += r.num_generated_tokens

    def as_dict(self) -> dict[str, int]:
        return {
            "num_calls": self.num_calls,
            "num_requests": self.num_requests,
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "generated_tokens": self.generated_tokens,
        }


class Engine(Protocol):
    """Token ids in, completions out. Chat rendering lives in palign_ray.chat, not here."""

    tokenizer: Any  # a Hugging Face tokenizer (encode/decode/apply_chat_template)
    stats: EngineStats

    def generate(
        self, prompts: Sequence[Sequence[int]], params: SamplingSpec | Sequence[SamplingSpec]
    ) -> list[GenerationResult]:
        """One batched call; one result per prompt, in order."""
        ...

    def shutdown(self) -> None:
        """Release the engine's memory/devices (before Ray Train takes the GPUs)."""
        ...
