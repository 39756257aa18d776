"""A scripted engine for unit tests of pure logic (never used by a stage that claims to run)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from palign_ray.engines.base import Completion, EngineStats, GenerationResult, SamplingSpec

# respond(prompt_ids, params, sample_index) -> (text, {token_id: logprob} for the first token or None)
Responder = Callable[[Sequence[int], SamplingSpec, int], tuple[str, dict[int, float] | None]]


class FakeEngine:
    """Answers every prompt through `respond`; token ids come from `tokenizer` when given."""

    def __init__(
        self,
        respond: Responder,
        tokenizer: Any = None,
        cache_prefixes: bool = True,
        kv: tuple[int, int] | None = None,
    ):
        self.respond = respond
        self.kv = kv  # (tokens, block size) that kv_capacity reports; None = unknown
        self.tokenizer = tokenizer
        self.stats = EngineStats()
        self.calls: list[list[tuple[int, ...]]] = []  # prompts of every call, for assertions
        self._seen: list[tuple[int, ...]] = []
        self._cache_prefixes = cache_prefixes

    def _cached(self, ids: tuple[int, ...]) -> int:
        best = 0
        for prev in self._seen if self._cache_prefixes else ():
            n = 0
            for a, b in zip(prev, ids, strict=False):
                if a != b:
                    break
                n += 1
            best = max(best, n)
        return best

    def generate(
        self, prompts: Sequence[Sequence[int]], params: SamplingSpec | Sequence[SamplingSpec]
    ) -> list[GenerationResult]:
        plist = [params] * len(prompts) if isinstance(params, SamplingSpec) else list(params)
        ids_list = [tuple(p) for p in prompts]
        self.calls.append(ids_list)
        results = []
        for ids, sp in zip(ids_list, plist, strict=True):
            comps = []
            for i in range(sp.n):
                text, first_lp = self.respond(ids, sp, i)
                toks = (
                    tuple(self.tokenizer.encode(text, add_special_tokens=False))
                    if self.tokenizer
                    else tuple(range(len(text.split())))
                )
                lps = (first_lp,) if (sp.logprobs is not None and first_lp is not None) else None
                finish = "length" if len(toks) >= sp.max_tokens else "stop"
                comps.append(
                    Completion(
                        text=text,
                        token_ids=toks[: sp.max_tokens],
                        finish_reason=finish,
                        logprobs=lps,
                    )
                )
            results.append(GenerationResult(tuple(comps), len(ids), self._cached(ids)))
            self._seen.append(ids)
        self.stats.add(results)
        return results

    async def agenerate(
        self, prompts: Sequence[Sequence[int]], params: SamplingSpec | Sequence[SamplingSpec]
    ) -> list[GenerationResult]:
        """The async entry the stage workers use (answers at once)."""
        return self.generate(prompts, params)

    def kv_capacity(self) -> tuple[int, int] | None:
        return self.kv

    def shutdown(self) -> None:
        pass
