"""KV-aware admission: an engine actor keeps in flight only what its engine's KV cache holds. Pure
asyncio: no Ray, no vLLM.

Judge: every probe of a problem shares the problem's prompt (question and trace up to the cut). With
more problems in flight than the cache holds, a problem's blocks are evicted between its rounds and
every round prefills its trace again: measured on 70 R1-distill traces with a 46,592-token cache,
64 problems in flight computed 2.73x the prefill the problems need (issue 29). A problem reserves
its footprint (`judge.rounds.resident_tokens`); a batch starts only when everything resident and
the batch fit, and a problem's footprint is freed the moment its search ends.

Generation (teacher, align, eval): a request reserves its prompt plus `max_tokens` per sample, so
the sequences running at once fit the cache whole and vLLM never preempts (recomputes) one; this
stands in for deriving `max_num_seqs` from the cache, which vLLM sizes only after it starts.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class KVAdmission:
    """Tokens reserved on one engine's KV cache, first come first served.

    A request larger than the whole budget is admitted alone (when nothing else is resident), so
    every problem runs; it may then be evicted between rounds, as without admission.
    """

    capacity: int
    used: int = 0
    peak: int = 0
    waits: int = 0  # acquisitions that had to wait for room
    _queue: deque[tuple[int, asyncio.Future[None]]] = field(default_factory=deque)

    def _fits(self, tokens: int) -> bool:
        return self.used == 0 or self.used + tokens <= self.capacity

    async def acquire(self, tokens: int) -> None:
        if not self._queue and self._fits(tokens):
            self._take(tokens)
            return
        self.waits += 1
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((tokens, future))
        await future  # _wake has taken the tokens for this waiter

    def release(self, tokens: int) -> None:
        self.used -= tokens
        self._wake()

    def _take(self, tokens: int) -> None:
        self.used += tokens
        self.peak = max(self.peak, self.used)

    def _wake(self) -> None:
        while self._queue and self._fits(self._queue[0][0]):
            tokens, future = self._queue.popleft()
            if future.cancelled():
                continue
            self._take(tokens)
            future.set_result(None)


def reported_kv(engine: Any) -> tuple[int, int] | None:
    """(tokens, block size) of the engine's KV cache as it reports it, or None (no such report)."""
    return engine.kv_capacity() if hasattr(engine, "kv_capacity") else None


def fitting_batches(footprints: Sequence[int], capacity: int, batch_size: int) -> list[list[int]]:
    """Indices of problems in batches of at most `batch_size` problems and `capacity` tokens (a problem
    over capacity on its own), in input order."""
    batches: list[list[int]] = []
    current: list[int] = []
    total = 0
    for i, tokens in enumerate(footprints):
        if current and (len(current) >= batch_size or total + tokens > capacity):
            batches.append(current)
            current, total = [], 0
        current.append(i)
        total += tokens
    if current:
        batches.append(current)
    return batches
