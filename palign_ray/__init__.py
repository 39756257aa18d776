"""P-ALIGN long-chain reasoning distillation on Ray, vLLM and DeepSpeed (heavy imports are lazy)."""

__version__ = "0.1.0"
