"""Engines: one small protocol (base.py), vLLM behind it (vllm_engine.py), a scripted fake (fake.py)."""

from palign_ray.engines.base import Completion, Engine, EngineStats, GenerationResult, SamplingSpec

__all__ = ["Completion", "Engine", "EngineStats", "GenerationResult", "SamplingSpec"]
