"""`import palign_ray` (and its pure modules) must not pull vllm, torch, deepspeed or ray."""

import subprocess
import sys

PURE_MODULES = [
    "palign_ray",
    "palign_ray.config",
    "palign_ray.cli",
    "palign_ray.records",
    "palign_ray.artifacts",
    "palign_ray.engines",
    "palign_ray.engines.fake",
    "palign_ray.engines.openai_api",
    "palign_ray.models",
    "palign_ray.chat",
    "palign_ray.generation",
    "palign_ray.ray_env",
    "palign_ray.sentences",
    "palign_ray.judge.search",
    "palign_ray.judge.prompts",
    "palign_ray.judge.calibration",
    "palign_ray.judge.contract",
    "palign_ray.judge.problem",
    "palign_ray.judge.probes",
    "palign_ray.judge.rounds",
    "palign_ray.judge.rows",
    "palign_ray.judge.summary",
    "palign_ray.judge.ingest",
    "palign_ray.judge.audit",
    "palign_ray.judge.measure",
    "palign_ray.judge.stage",
    "palign_ray.judge.rollout",
    "palign_ray.admission",
    "palign_ray.cli.stages",
    "palign_ray.cli.tools",
    "palign_ray.grading",
    "palign_ray.metrics",
    "palign_ray.benchmarks",
    "palign_ray.eval.score",
    "palign_ray.eval.report",
    "palign_ray.eval.files",
    "palign_ray.eval.stage",
    "palign_ray.problems",
    "palign_ray.decontam",
    "palign_ray.builtin",
    "palign_ray.teacher",
    "palign_ray.align",
    "palign_ray.sft.records",
    "palign_ray.sft.data",
    "palign_ray.sft.deepspeed_config",
    "palign_ray.sft.checkpoints",
    "palign_ray.sft.train",
    "palign_ray.pipeline",
    "palign_ray.summaries",
    "palign_ray.report",
    "palign_ray.compare.run",
    "palign_ray.compare.stats",
    "palign_ray.compare.table",
    "palign_ray.compare.groups",
    "palign_ray.compare.facts",
    "palign_ray.compare.samples",
    "palign_ray.compare.markdown",
    "palign_ray.compare.plots",
    "palign_ray.compare.report",
]
HEAVY = ["vllm", "torch", "deepspeed", "ray", "transformers"]


def test_pure_modules_do_not_import_heavy_packages():
    code = (
        "import importlib, sys\n"
        f"for m in {PURE_MODULES!r}:\n"
        "    try:\n        importlib.import_module(m)\n"
        "    except ModuleNotFoundError as e:\n        if not e.name.startswith('palign_ray'): raise\n"
        f"bad = [h for h in {HEAVY!r} if h in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"heavy imports at import time: {out.stdout.strip()}"
