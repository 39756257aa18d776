"""Benchmarks of the judge, generation and SFT against their baselines (run as: python -m bench.run)."""
