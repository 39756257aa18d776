"""Config: defaults documented, YAML round trip, dotted overrides, unknown keys and wrong types rejected."""

import dataclasses
import typing
from pathlib import Path

import pytest

from palign_ray.config import (
    Config,
    ConfigError,
    config_hash,
    dump_yaml,
    help_lines,
    load_config,
    stage_engine,
)

REPO = Path(__file__).resolve().parents[1]


def _all_fields(cls=Config, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _all_fields(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, f


def test_every_field_has_help():
    missing = [k for k, f in _all_fields() if not f.metadata.get("help")]
    assert missing == []


def test_yaml_round_trip(tmp_path):
    cfg = load_config(
        None, ["judge.threshold=0.3", "sft.lora=true", "eval.benchmarks=[gsm8k, math500]"]
    )
    path = tmp_path / "c.yaml"
    path.write_text(dump_yaml(cfg))
    again = load_config(path)
    assert again == cfg
    assert again.judge.threshold == 0.3 and again.sft.lora is True
    assert again.eval.benchmarks == ("gsm8k", "math500")


def test_override_int_to_float_and_comma_lists():
    cfg = load_config(None, ["judge.threshold=1", "eval.benchmarks=gsm8k,aime24"])
    assert cfg.judge.threshold == 1.0 and isinstance(cfg.judge.threshold, float)
    assert cfg.eval.benchmarks == ("gsm8k", "aime24")


@pytest.mark.parametrize(
    "override, needle",
    [
        ("judge.treshold=0.3", "judge.treshold"),
        ("nosuch.key=1", "nosuch"),
        ("sft.zero_stage=two", "sft.zero_stage"),
        ("sft.lora=3", "sft.lora"),
        ("judge.search=ternary", "judge.search"),
        ("judge=3", "judge"),
        ("novalue", "key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(None, [override])


def test_unknown_key_in_yaml_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("judge:\n  thresold: 0.5\n")
    with pytest.raises(ConfigError, match=r"judge\.thresold"):
        load_config(p)


def test_config_is_frozen():
    cfg = load_config(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.judge.threshold = 0.1  # type: ignore[misc]


def test_hash_changes_with_section():
    a, b = load_config(None), load_config(None, ["judge.threshold=0.2"])
    assert config_hash(a.judge) != config_hash(b.judge)
    assert config_hash(a.teacher) == config_hash(b.teacher)


def test_default_job_config_loads_and_help_lists_keys():
    cfg = load_config(REPO / "jobs" / "configs" / "default.yaml")
    assert cfg.teacher.model == "default"
    text = "\n".join(help_lines())
    assert "judge.threshold=" in text and "sft.zero_stage=" in text


def test_stage_engine_overlays_only_the_fields_set():
    cfg = load_config(
        None,
        [
            "engine.max_num_seqs=32",
            "ray.num_actors=4",
            "teacher.engine.tensor_parallel_size=4",
            "teacher.engine.num_gpus_per_actor=4",
            "teacher.engine.num_actors=2",
        ],
    )
    engine, ray = stage_engine(cfg, "teacher")
    assert (
        engine.tensor_parallel_size,
        engine.max_num_seqs,
        ray.num_actors,
        ray.num_gpus_per_actor,
    ) == (4, 32, 2, 4.0)
    engine, ray = stage_engine(cfg, "judge")  # unset → the global sections
    resolved = (dataclasses.replace(engine, cpu_threads=None), ray)  # platform values filled in
    assert resolved == (cfg.engine, dataclasses.replace(cfg.ray, num_gpus_per_actor=0.0))
    with pytest.raises(ValueError, match="sections with engines"):
        stage_engine(cfg, "sft")


def test_stage_engine_needs_a_gpu_per_tensor_parallel_rank():
    cfg = load_config(None, ["ray.num_gpus_per_actor=1", "teacher.engine.tensor_parallel_size=4"])
    with pytest.raises(ConfigError, match="teacher.engine.num_gpus_per_actor"):
        stage_engine(cfg, "teacher")


def test_stage_engine_yaml_and_null_resets(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("eval:\n  engine:\n    max_model_len: 4096\n    num_actors: 2\n")
    cfg = load_config(path, ["eval.engine.num_actors=null"])
    engine, ray = stage_engine(cfg, "eval")
    assert engine.max_model_len == 4096 and ray.num_actors == cfg.ray.num_actors
    with pytest.raises(ConfigError, match="eval.engine.bogus"):
        load_config(None, ["eval.engine.bogus=1"])


def test_engine_defaults_depend_on_the_platform():
    from palign_ray.config import EngineConfig, resolve_engine_defaults

    keys = ("enforce_eager", "gpu_memory_utilization", "max_num_seqs")
    unset = EngineConfig()
    assert all(getattr(unset, k) is None for k in keys)  # null = "the platform's default"
    cpu, cuda = (
        resolve_engine_defaults(unset, on_cuda=False),
        resolve_engine_defaults(unset, on_cuda=True),
    )
    assert [getattr(cpu, k) for k in keys] == [True, 0.5, 64]  # as measured on the CPU box
    assert [getattr(cuda, k) for k in keys] == [False, 0.9, 256]
    mine = resolve_engine_defaults(EngineConfig(max_num_seqs=8, enforce_eager=True), on_cuda=True)
    assert (mine.max_num_seqs, mine.enforce_eager, mine.gpu_memory_utilization) == (
        8,
        True,
        0.9,
    )  # set fields kept
    assert resolve_engine_defaults(cpu, on_cuda=True) == cpu  # nothing left to fill


def test_engine_dtype_is_float32_only_on_a_cpu_without_native_bf16():
    """The AVX2-only CPU generated 58 tokens/s in bfloat16 against 246 in float32 (2026-12-05)."""
    from palign_ray.config import EngineConfig, resolve_engine_defaults

    unset = EngineConfig()
    assert resolve_engine_defaults(unset, on_cuda=False, cpu_bf16=False).dtype == "float32"
    assert resolve_engine_defaults(unset, on_cuda=False, cpu_bf16=True).dtype == "bfloat16"
    assert resolve_engine_defaults(unset, on_cuda=True, cpu_bf16=False).dtype == "bfloat16"
    mine = EngineConfig(dtype="bfloat16")  # a dtype the user set is kept
    assert resolve_engine_defaults(mine, on_cuda=False, cpu_bf16=False).dtype == "bfloat16"


def test_cpu_engines_share_the_cores_not_rays_fractional_cpus(monkeypatch):
    """A Ray actor with num_cpus 0.5 gets one OpenMP thread; an unset engine.cpu_threads gives each of a
    stage's actors its share of the cores instead (capped by a local Ray's declared CPUs)."""
    import palign_ray.config as C

    assert C.default_cpu_threads(0, 16, 1) == 16  # ray.num_cpus 0: every usable core
    assert C.default_cpu_threads(0, 16, 3) == 5 and C.default_cpu_threads(0, 2, 4) == 1
    assert C.default_cpu_threads(8, 16, 2) == 4  # a local Ray of 8 CPUs on a 16-core machine
    assert C.default_cpu_threads(4, 2, 1) == 2  # more logical CPUs declared than cores
    monkeypatch.setattr(C, "usable_cpus", lambda: 8)
    cfg = load_config(None, ["ray.num_actors=2", "align.engine.num_actors=1"])
    assert C.stage_engine(cfg, "teacher")[0].cpu_threads == 4
    assert C.stage_engine(cfg, "align")[0].cpu_threads == 8  # the stage's own pool size
    cfg = load_config(None, ["engine.cpu_threads=3", "judge.engine.cpu_threads=1"])
    assert C.stage_engine(cfg, "teacher")[0].cpu_threads == 3  # set values are kept
    assert C.stage_engine(cfg, "judge")[0].cpu_threads == 1
    assert config_hash(C.EngineConfig(cpu_threads=3)) == config_hash(
        C.EngineConfig()
    )  # speed, not results


def test_engine_hash_is_unchanged_by_platform_defaults():
    """Finished CPU runs keep their stage hashes: 3ab2321a607d1eaf is the default engine's hash from before
    enforce_eager/gpu_memory_utilization/max_num_seqs became platform defaults (then True/0.5/64)."""
    from palign_ray.config import EngineConfig, resolve_engine_defaults

    assert config_hash(EngineConfig()) == "3ab2321a607d1eaf"
    assert config_hash(resolve_engine_defaults(EngineConfig(), on_cuda=False)) == "3ab2321a607d1eaf"
    assert config_hash(EngineConfig(max_num_seqs=32)) != "3ab2321a607d1eaf"


@pytest.mark.parametrize(
    "platform, eager, util, seqs", [("cpu", True, 0.5, 64), ("cuda", False, 0.9, 256)]
)
def test_palign_config_shows_the_platform_defaults(capsys, platform, eager, util, seqs):
    import yaml

    from palign_ray.cli import main

    assert main(["config", "--platform", platform, "judge.threshold=0.3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# engine defaults for {platform}")
    shown = yaml.safe_load(out)
    assert (
        shown["engine"]["enforce_eager"],
        shown["engine"]["gpu_memory_utilization"],
        shown["engine"]["max_num_seqs"],
    ) == (eager, util, seqs)
    assert shown["judge"]["threshold"] == 0.3
    from palign_ray.hardware import usable_cpus

    assert shown["engine"]["cpu_threads"] == (usable_cpus() if platform == "cpu" else None)
    assert shown["ray"]["num_gpus_per_actor"] == (0.0 if platform == "cpu" else 1.0)


def test_numbers_written_the_usual_ways_are_accepted():
    """Issue 27: `sft.learning_rate=1e-4` was refused (YAML 1.1 reads 1e-4 as text)."""
    cfg = load_config(
        None, ["sft.learning_rate=1e-4", "judge.threshold=5e-1", "sft.max_steps=1_000"]
    )
    assert (cfg.sft.learning_rate, cfg.judge.threshold, cfg.sft.max_steps) == (1e-4, 0.5, 1000)
    with pytest.raises(ConfigError, match="sft.max_steps: expected int, got str '1e3'"):
        load_config(None, ["sft.max_steps=1e3"])
    with pytest.raises(ConfigError, match="sft.learning_rate: expected float, got str 'fast'"):
        load_config(None, ["sft.learning_rate=fast"])


def test_engine_actors_ask_for_their_gpus_on_a_cuda_vllm(monkeypatch):
    """Issue 29.1: with num_gpus_per_actor 0 Ray set no CUDA_VISIBLE_DEVICES and every engine took GPU 0."""
    import palign_ray.engines.vllm_engine as V

    cfg = load_config(
        None, ["judge.engine.tensor_parallel_size=2", "eval.engine.num_gpus_per_actor=4"]
    )
    monkeypatch.setattr(V, "is_cpu_build", lambda: False)
    assert stage_engine(cfg, "teacher")[1].num_gpus_per_actor == 1.0  # = tensor_parallel_size
    assert stage_engine(cfg, "judge")[1].num_gpus_per_actor == 2.0
    assert stage_engine(cfg, "eval")[1].num_gpus_per_actor == 4.0  # a value set is kept
    monkeypatch.setattr(V, "is_cpu_build", lambda: True)
    assert stage_engine(cfg, "teacher")[1].num_gpus_per_actor == 0.0  # vLLM-CPU: no GPUs
