"""Up-front validation: every planned stage's settings are checked before the first stage runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from palign_ray.checks import plan_problems, validate_plan
from palign_ray.config import Config, JudgeConfig, config_from_dict, load_config
from palign_ray.judge.contract import check_judge_config


def test_isotonic_needs_logprob_verdicts() -> None:
    """judge.isotonic fits p(ENOUGH) scores; generate verdicts have none, so every cut would be discarded."""
    with pytest.raises(ValueError, match=r"judge.isotonic=true needs judge.verdict=logprob"):
        check_judge_config(JudgeConfig(isotonic=True, verdict="generate"))
    check_judge_config(JudgeConfig(isotonic=True, verdict="logprob"))
    check_judge_config(
        JudgeConfig(isotonic=True, verdict="generate", search="fixed_ratio")
    )  # no judging at all


ALL = ("problems", "teacher", "truncate", "align", "sft_data", "train", "base_eval", "eval")


def _cfg(*overrides: str) -> Config:
    # align.max_seq_len = sft.max_seq_len: the shipped defaults (2048 vs 1024) are themselves flagged
    return config_from_dict({}, ["align.max_seq_len=1024", *overrides])


def test_a_valid_config_passes_every_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert plan_problems(_cfg(), ALL) == []
    validate_plan(_cfg(), ALL)


def test_every_problem_of_every_planned_stage_is_named_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Late-stage mistakes fail before the first stage runs, all in one error, each naming its key."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = _cfg(
        "judge.isotonic=true",
        "judge.verdict=generate",  # truncate: every cut would be discarded
        "eval.engine.tensor_parallel_size=2",  # eval: two-way tensor parallel with no GPU per actor
        "align.max_seq_len=4096",  # sft_data/train: examples pass sft_data, then training drops them
        "sft.zero_stage=1",
        "sft.warmup_ratio=1.5",  # train: DeepSpeed config and schedule
        "teacher.num_samples=0",
        "align.max_tokens=4096",
    )  # no sample; no room for any prompt
    with pytest.raises(ValueError) as err:
        validate_plan(cfg, ALL)
    msg = str(err.value)
    lines = [line for line in msg.splitlines() if line.startswith("  - ")]
    expected = [
        "teacher: teacher.num_samples=0: must be >= 1",
        "truncate: judge.isotonic=true needs judge.verdict=logprob",
        "align: align.engine.max_model_len=2048 leaves no room for a prompt before 4096 new tokens",
        "train: sft.zero_stage=1: use 2 or 3",
        "train: sft.warmup_ratio=1.5 must be in [0, 1)",
        "base_eval/eval: eval.engine: tensor_parallel_size=2 with num_gpus_per_actor=0",
        "sft_data/train: align.max_seq_len=4096 > sft.max_seq_len=1024",
    ]
    assert len(lines) == len(expected), msg
    for line, want in zip(lines, expected, strict=True):
        assert line.startswith(f"  - {want}"), (line, want)
    assert msg.startswith(f"{len(expected)} problem(s) in the settings of the planned stages")
    # only planned stages are checked: the same config is fine for a problems-only run
    validate_plan(cfg, ("problems",))
    tp = next(m for m in lines if "tensor_parallel" in m)[
        4:
    ]  # reported once for the two eval stages
    assert plan_problems(cfg, ("eval",)) == ["eval: " + tp.split(": ", 1)[1]]
    # shards built on their own (`palign sft-data`) may be for another trainer: no length mismatch then
    assert not [m for m in plan_problems(cfg, ("sft_data",)) if "max_seq_len" in m]


def test_engine_settings_resolved_per_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # stage_engine's own check (fewer GPUs than tensor-parallel ranks) is reported, not raised mid-run
    got = plan_problems(
        _cfg("teacher.engine.tensor_parallel_size=4", "teacher.engine.num_gpus_per_actor=2"),
        ("teacher",),
    )
    assert len(got) == 1 and "num_gpus_per_actor=2.0 is less than tensor_parallel_size=4" in got[0]
    assert (
        plan_problems(
            _cfg("teacher.engine.tensor_parallel_size=4", "teacher.engine.num_gpus_per_actor=4"),
            ("teacher",),
        )
        == []
    )
    # a CPU engine (no GPU per actor) cannot take more than half the memory
    got = plan_problems(_cfg("engine.gpu_memory_utilization=0.9"), ("align",))
    assert got == [
        "align: align.engine.gpu_memory_utilization=0.9 with num_gpus_per_actor=0 (a CPU engine): must be <= 0.5 "
        "(vLLM's CPU backend reads the NUMA node size)"
    ]
    assert (
        plan_problems(
            _cfg("engine.gpu_memory_utilization=0.9", "ray.num_gpus_per_actor=1"), ("align",)
        )
        == []
    )
    got = plan_problems(_cfg("ray.max_actor_restarts=-2"), ("align",))
    assert got == ["align: align.engine.max_actor_restarts=-2: must be >= -1 (-1: without limit)"]
    got = plan_problems(_cfg("judge.engine.cpu_threads=0"), ("truncate",))
    assert got == [
        "truncate: judge.engine.cpu_threads=0: must be >= 1 (null: the cores ÷ the stage's actors)"
    ]
    # a local Ray whose actor pool takes every CPU would deadlock Ray Data; a cluster is not checked
    busy = _cfg("ray.num_cpus=2", "eval.engine.num_actors=4")
    assert any(
        "num_actors × num_cpus_per_actor = 2.0 leaves no CPU" in m
        for m in plan_problems(busy, ("eval",))
    )
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert plan_problems(busy, ("eval",)) == []
    # judge generate mode: the decode budget must fit the engine
    got = plan_problems(_cfg("judge.verdict=generate", "judge.max_new_tokens=4096"), ("truncate",))
    assert (
        len(got) == 1
        and "judge.engine.max_model_len=2048 leaves no room for a prompt before 4096 new tokens"
        in got[0]
    )


def test_fixed_ratio_needs_no_judge_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    judge_bad = ("judge.isotonic=true", "judge.verdict=generate")
    assert plan_problems(_cfg(*judge_bad, "judge.search=fixed_ratio"), ("truncate",)) == []
    assert plan_problems(_cfg(*judge_bad, "run.method=fixed_ratio"), ("truncate",)) == []
    assert plan_problems(
        _cfg("judge.search=fixed_ratio", "judge.fixed_ratio=0"), ("truncate",)
    ) == ["truncate: judge.fixed_ratio must be in (0, 1], got 0.0"]


def test_paths_the_driver_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    empty_dir = tmp_path / "model"
    empty_dir.mkdir()
    cfg = _cfg(
        "problems.source=file",
        f"problems.path={tmp_path / 'nope.jsonl'}",
        f"sft.model={empty_dir}",
        f"teacher.model={tmp_path / 'missing'}",
        "eval.benchmarks=[gsm8k, nosuch]",
        f"eval.data_dir={tmp_path}",
    )
    got = plan_problems(cfg, ALL)
    assert got == [
        f"problems: problems.path={str(tmp_path / 'nope.jsonl')!r} does not exist",
        f"base_eval/eval: eval.benchmarks: 'gsm8k' needs {tmp_path / 'gsm8k/gsm8k_test.jsonl'}, which is missing (set eval.data_dir to the shared data folder)",
        "base_eval/eval: eval.benchmarks: 'nosuch' is neither a known name (builtin, math500, aime24, aime25, amc12, amc23, gsm8k) nor an existing file",
        f"teacher: teacher.model={str(tmp_path / 'missing')!r}: no such model directory",
        f"sft_data/train/base_eval: sft.model={str(empty_dir)!r}: model directory {empty_dir} has no config.json",
    ]
    assert plan_problems(cfg, ALL, check_paths=False) == []
    assert plan_problems(_cfg("problems.source=file"), ("problems",)) == [
        "problems: problems.source=file needs problems.path (a JSONL/Parquet file or a datasets directory)"
    ]
    assert plan_problems(_cfg("problems.filter=nonsense"), ("problems",))[0].startswith(
        "problems: problems.filter='nonsense'"
    )


@pytest.mark.parametrize(
    "name", ["qwen32b_to_qwen7b_lora", "qwen32b_to_qwen3_8b_full", "s1k_ingest", "hosted_teacher"]
)
def test_shipped_cluster_configs_validate(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the cluster (RAY_ADDRESS set, shared storage not mounted here) every stage's settings hold."""
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    cfg = load_config(Path(__file__).parents[1] / "jobs" / "configs" / f"{name}.yaml")
    assert plan_problems(cfg, ALL, check_paths=False) == []


def test_unknown_stage_and_the_module_is_light() -> None:
    assert plan_problems(_cfg(), ("teacher", "judge")) == [
        "unknown stage(s) ['judge']; stages are ['problems', 'teacher', 'truncate', 'align', 'sft_data', 'train', 'base_eval', 'eval']"
    ]
    code = (
        "import sys\nfrom palign_ray.checks import validate_plan\nfrom palign_ray.config import Config\n"
        "try:\n    validate_plan(Config(), ['problems', 'teacher', 'truncate', 'align', 'sft_data', 'train', 'base_eval', 'eval'])\n"
        "except ValueError:\n    pass\n"
        "print(','.join(m for m in ('ray', 'vllm', 'torch', 'transformers', 'deepspeed', 'pyarrow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_a_cuda_engine_without_gpus_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import palign_ray.engines.vllm_engine as V

    monkeypatch.setattr(V, "is_cpu_build", lambda: False)
    got = plan_problems(_cfg("align.engine.num_gpus_per_actor=0"), ("align",))
    assert len(got) == 1 and "align.engine.num_gpus_per_actor=0 with a CUDA vLLM" in got[0]
    assert plan_problems(_cfg(), ("align",)) == []  # null: the tensor-parallel size
