"""Every planned stage's settings checked before the first stage runs, all problems named at once (pure).

A bad value in a late stage (eval's tensor parallelism, a training setting, a missing benchmark file)
would otherwise surface when that stage starts, after the teacher may have run for hours. The checks
here are the cheap ones, made without Ray, engines or downloads: value ranges, combinations that
cannot work, and (with check_paths) files and model directories that the driver reads.

Which stages exist, which check each one has and which models it loads are the stage table's rows
(`pipeline.STAGES`); this module holds the checks themselves.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from palign_ray.config import Config, stage_engine
from palign_ray.fields import parse_filter
from palign_ray.models import DEFAULT_ALIASES, check_model_dir
from palign_ray.ray_env import ray_address

# The stage table (pipeline.STAGES) names the check functions below, so this module loads with the
# pipeline: the judge's, training's and the benchmarks' modules load inside their checks instead.


def validate_plan(cfg: Config, stages: Sequence[str], check_paths: bool = True) -> None:
    """Raise ValueError listing every problem in the settings of `stages` (none: return).

    check_paths=False skips the checks that look at the local disk (problem file, benchmark files,
    model directories), for validating a cluster config on a machine without its shared storage.
    """
    problems = plan_problems(cfg, stages, check_paths)
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise ValueError(
            f"{len(problems)} problem(s) in the settings of the planned stages "
            f"({', '.join(stages)}); nothing was run:\n{listing}"
        )


def plan_problems(cfg: Config, stages: Sequence[str], check_paths: bool = True) -> list[str]:
    """Every problem found, each as 'stage: key=value: what is wrong (and the fix)'."""
    from palign_ray.pipeline import STAGE_NAMES, STAGES  # the table's rows name these checks

    unknown = sorted(set(stages) - set(STAGE_NAMES))
    out = [f"unknown stage(s) {unknown}; stages are {list(STAGE_NAMES)}"] if unknown else []
    planned = [s for s in STAGES if s.name in stages]
    done: list[Callable[[Config, bool], list[str]]] = []
    for row in planned:
        if row.check is None or row.check in done:
            continue
        done.append(row.check)
        # stages with one check (base_eval and eval: eval's settings) are reported once, as a/b
        name = "/".join(s.name for s in planned if s.check is row.check)
        out += [f"{name}: {msg}" for msg in row.check(cfg, check_paths)]
    out += _models(cfg, planned, check_paths)
    # both planned: shards built on their own (`palign sft-data`) may be meant for another trainer
    if {"sft_data", "train"} <= set(stages) and cfg.align.max_seq_len > cfg.sft.max_seq_len:
        out.append(
            f"sft_data/train: align.max_seq_len={cfg.align.max_seq_len} > sft.max_seq_len={cfg.sft.max_seq_len}: "
            "examples between the two pass sft_data only to be dropped by training; make them equal "
            "(or align.max_seq_len smaller)"
        )
    return out


# ---- helpers ------------------------------------------------------------------------------------


def _raised(fn: Callable[..., Any], *args: Any) -> list[str]:
    """The message of the ValueError (or missing file) `fn(*args)` raises, as a one-item list."""
    try:
        fn(*args)
    except (ValueError, FileNotFoundError) as e:
        return [str(e)]
    return []


def _ranges(
    section: str, obj: Any, rules: Iterable[tuple[str, Callable[[Any], bool], str]]
) -> list[str]:
    """`section.field=value: must be ...` for every (field, ok, what) rule the value breaks."""
    return [
        f"{section}.{name}={getattr(obj, name)!r}: must be {what}"
        for name, ok, what in rules
        if not ok(getattr(obj, name))
    ]


def _at_least(n: float) -> Callable[[Any], bool]:
    return lambda v: v >= n


def _positive(v: Any) -> bool:
    return v > 0


def _model(key: str, name: str, check_paths: bool) -> list[str]:
    """A model the stage loads: named, and a local directory that holds what models.resolve_model needs.

    HF ids are not looked up: the cache that matters is the one on the nodes that load them.
    """
    if not name.strip():
        return [f"{key} is empty; use 'default', a local directory or a cached HF id"]
    if not check_paths or name in DEFAULT_ALIASES:
        return []
    path = Path(name).expanduser()
    if path.exists():
        return [f"{key}={name!r}: {msg}" for msg in _raised(check_model_dir, path)]
    if name.startswith(("/", ".", "~")) or name.count("/") != 1:  # a path, not an HF id
        return [f"{key}={name!r}: no such model directory"]
    return []


def model_problems(key: str, name: str) -> list[str]:
    """What is wrong with the model `name` given as `key` (a command's --model): [] when it loads."""
    return _model(key, name, check_paths=True)


def _models(cfg: Config, planned: Sequence[Any], check_paths: bool) -> list[str]:
    """Each model key once (the rows' `models`), named with the planned stages that load it."""
    users: dict[str, list[str]] = {}
    for row in planned:
        for key in row.models:
            users.setdefault(key, []).append(row.name)
    if cfg.teacher.backend == "openai":  # a served model name, checked by _api
        users.pop("teacher.model", None)
    if not _judging(cfg):  # a fixed-ratio cut loads no judge
        users.pop("judge.model", None)
    out = []
    for key, used_by in users.items():
        section, field = key.split(".")
        out += [
            f"{'/'.join(used_by)}: {msg}"
            for msg in _model(key, getattr(getattr(cfg, section), field), check_paths)
        ]
    return out


def _engine(cfg: Config, section: str, max_new_tokens: int) -> list[str]:
    """The stage's engine and actor pool (what stage_engine resolves), and room for `max_new_tokens`."""
    try:
        engine, ray = stage_engine(cfg, section)
    except ValueError as e:
        return [str(e)]
    key = f"{section}.engine"
    out = _ranges(
        key,
        engine,
        [
            ("max_model_len", _at_least(1), ">= 1"),
            ("tensor_parallel_size", _at_least(1), ">= 1"),
            ("cpu_threads", _at_least(1), ">= 1 (null: the cores ÷ the stage's actors)"),
        ],
    )
    out += _ranges(
        key,
        ray,
        [
            ("num_actors", _at_least(1), ">= 1"),
            ("batch_size", _at_least(1), ">= 1"),
            ("num_cpus_per_actor", _at_least(0), ">= 0"),
            ("num_gpus_per_actor", _at_least(0), ">= 0"),
            ("max_actor_restarts", _at_least(-1), ">= -1 (-1: without limit)"),
            ("stall_timeout_s", _at_least(0), ">= 0 (0: never)"),
        ],
    )
    if getattr(ray, "max_concurrent_batches", 1) < 1:
        out.append(f"{key}.max_concurrent_batches={ray.max_concurrent_batches}: must be >= 1")
    from palign_ray.engines.vllm_engine import is_cpu_build

    if not is_cpu_build() and not ray.num_gpus_per_actor:
        out.append(
            f"{key}.num_gpus_per_actor=0 with a CUDA vLLM: Ray would not set the actor's "
            "CUDA_VISIBLE_DEVICES and every engine would land on GPU 0; leave it null "
            "(= tensor_parallel_size) or set it"
        )
    elif engine.tensor_parallel_size > 1 and not ray.num_gpus_per_actor:
        out.append(
            f"{key}: tensor_parallel_size={engine.tensor_parallel_size} with num_gpus_per_actor=0: the actor "
            f"gets no GPU to shard over; set {key}.num_gpus_per_actor={engine.tensor_parallel_size} "
            "(or tensor_parallel_size=1 on CPU)"
        )
    util = engine.gpu_memory_utilization
    if util is not None and not 0 < util <= 1:
        out.append(f"{key}.gpu_memory_utilization={util}: must be in (0, 1]")
    elif util is not None and util > 0.5 and not ray.num_gpus_per_actor:
        out.append(
            f"{key}.gpu_memory_utilization={util} with num_gpus_per_actor=0 (a CPU engine): must be <= 0.5 "
            "(vLLM's CPU backend reads the NUMA node size)"
        )
    if max_new_tokens >= engine.max_model_len:
        out.append(
            f"{key}.max_model_len={engine.max_model_len} leaves no room for a prompt before {max_new_tokens} "
            "new tokens; raise it or lower the stage's max_tokens"
        )
    if not ray_address(cfg.ray):  # a local Ray: the pool must leave CPUs for Ray Data's read tasks
        num_cpus = cfg.ray.num_cpus or os.cpu_count() or 2
        need = ray.num_actors * ray.num_cpus_per_actor
        if need >= num_cpus:
            out.append(
                f"{key}: num_actors × num_cpus_per_actor = {need} leaves no CPU for Ray Data on a local Ray "
                f"with {num_cpus} CPUs (it would deadlock); lower them or raise ray.num_cpus"
            )
    return out


def _sampling(section: str, obj: Any) -> list[str]:
    return _ranges(
        section,
        obj,
        [
            ("num_samples", _at_least(1), ">= 1"),
            ("max_tokens", _at_least(1), ">= 1"),
            ("temperature", _at_least(0), ">= 0"),
            ("top_p", lambda v: 0 < v <= 1, "in (0, 1]"),
            ("grade_timeout_s", _positive, "> 0"),
        ],
    )


# ---- one function per stage (the rows' `check`) --------------------------------------------------


def check_problems(cfg: Config, check_paths: bool) -> list[str]:
    p = cfg.problems
    out = _ranges(
        "problems",
        p,
        [("num_problems", _at_least(0), ">= 0 (0 = all)"), ("trace_index", _at_least(0), ">= 0")],
    )
    out += _raised(parse_filter, p.filter)
    if p.source == "file" and not p.path:
        out.append(
            "problems.source=file needs problems.path (a JSONL/Parquet file or a datasets directory)"
        )
    elif p.source == "file" and check_paths and not Path(p.path).expanduser().exists():
        out.append(f"problems.path={p.path!r} does not exist")
    return out


def check_teacher(cfg: Config, check_paths: bool) -> list[str]:
    t = cfg.teacher
    if t.backend == "openai":
        return _sampling("teacher", t) + _api("teacher", t)
    return _sampling("teacher", t) + _engine(cfg, "teacher", t.max_tokens)


def _api(section: str, t: Any) -> list[str]:
    """An OpenAI-compatible endpoint's settings (backend=openai): where, how many, how long, prices."""
    out = []
    if not t.base_url.startswith(("http://", "https://")):
        out.append(
            f"{section}.base_url={t.base_url!r}: backend=openai needs the API root, "
            "e.g. https://api.example.com/v1 or http://localhost:8000/v1"
        )
    if t.model in DEFAULT_ALIASES:
        out.append(
            f"{section}.model={t.model!r}: with backend=openai the model is the name the server "
            "serves (GET <base_url>/models lists them)"
        )
    out += _ranges(
        section,
        t,
        [
            ("max_concurrent_requests", _at_least(1), ">= 1"),
            ("request_timeout_s", _positive, "> 0"),
            ("max_retries", _at_least(0), ">= 0"),
            ("retry_base_s", _positive, "> 0"),
            ("retry_max_s", lambda v: v >= t.retry_base_s, f">= retry_base_s ({t.retry_base_s})"),
        ],
    )
    for name in ("price_prompt_per_mtok", "price_cached_per_mtok", "price_completion_per_mtok"):
        v = getattr(t, name)
        if v is not None and v < 0:
            out.append(f"{section}.{name}={v}: must be >= 0 (or null)")
    return out


def _judging(cfg: Config) -> bool:
    """Whether truncate runs a judge model: not where the method or judge.search fixes the cut."""
    from palign_ray.pipeline import effective_config

    return effective_config(cfg).judge.search != "fixed_ratio"


def check_truncate(cfg: Config, check_paths: bool) -> list[str]:
    from palign_ray.judge.audit import check_audit_config
    from palign_ray.judge.contract import check_judge_config, reference_config
    from palign_ray.judge.problem import reserved_tokens
    from palign_ray.judge.prompts import judge_template
    from palign_ray.judge.rollout import check_rollout_config
    from palign_ray.judge.search import fixed_ratio_k

    j = cfg.judge
    out = _ranges("judge", j, [("max_sentence_chars", _at_least(1), ">= 1")])
    if not _judging(cfg) or j.flat_fallback == "fixed_ratio":
        out += _raised(fixed_ratio_k, 1, j.fixed_ratio)
    if not _judging(cfg):  # no judge model runs, but the stage still resolves its engine settings
        return out + _raised(stage_engine, cfg, "judge")
    jcfg = reference_config(j) if j.paper_reference else j  # what truncate_rows runs with
    out += _raised(check_judge_config, jcfg) + _raised(judge_template, j.prompt_version)
    out += _raised(check_audit_config, cfg) + _raised(check_rollout_config, cfg)
    if j.search == "kary" and j.kary_k < 1:
        out.append(f"judge.kary_k={j.kary_k}: must be >= 1")
    return out + _engine(cfg, "judge", reserved_tokens(jcfg))


def check_align(cfg: Config, check_paths: bool) -> list[str]:
    a = cfg.align
    out = _sampling("align", a) + _ranges("align", a, [("repetition_penalty", _positive, "> 0")])
    return out + _engine(cfg, "align", a.max_tokens)


def check_sft_data(cfg: Config, check_paths: bool) -> list[str]:
    return _ranges(
        "align",
        cfg.align,
        [("max_seq_len", _at_least(1), ">= 1"), ("shard_rows", _at_least(1), ">= 1")],
    )


def check_train(cfg: Config, check_paths: bool) -> list[str]:
    from palign_ray.sft.deepspeed_config import ds_config, resolve_precision, warmup_steps

    s = cfg.sft
    out = _ranges(
        "sft",
        s,
        [
            ("num_workers", _at_least(1), ">= 1"),
            ("cpus_per_worker", _positive, "> 0"),
            ("micro_batch_size", _at_least(1), ">= 1"),
            ("grad_accum_steps", _at_least(1), ">= 1"),
            ("max_steps", _at_least(0), ">= 0 (0 = epochs decide)"),
            ("total_steps", _at_least(0), ">= 0 (0 = epochs decide)"),
            ("learning_rate", _positive, "> 0"),
            ("weight_decay", _at_least(0), ">= 0"),
            ("grad_clip", _at_least(0), ">= 0"),
            ("max_seq_len", _at_least(1), ">= 1"),
            ("checkpoint_every", _at_least(0), ">= 0"),
            ("keep_checkpoints", _at_least(1), ">= 1"),
            ("max_failures", _at_least(0), ">= 0"),
        ],
    )
    if s.max_steps == 0 and s.total_steps == 0 and s.epochs < 1:
        out.append(
            f"sft.epochs={s.epochs} with sft.max_steps=0: nothing would be trained; set one of them >= 1"
        )
    if s.lora:
        out += _ranges(
            "sft",
            s,
            [
                ("lora_r", _at_least(1), ">= 1"),
                ("lora_alpha", _positive, "> 0"),
                ("lora_dropout", lambda v: 0 <= v < 1, "in [0, 1)"),
                ("lora_target_modules", bool, "non-empty with sft.lora=true"),
            ],
        )
    if s.precision == "auto":  # the ranks resolve it; either outcome must make a valid config
        s = dataclasses.replace(s, precision=resolve_precision(s.precision, s.use_gpu, True))
    return (
        out + _raised(ds_config, s, max(1, s.num_workers), s.use_gpu) + _raised(warmup_steps, s, 1)
    )


def check_eval(cfg: Config, check_paths: bool) -> list[str]:
    from palign_ray.benchmarks import BENCHMARKS, BUILTIN, benchmark_names

    e = cfg.eval
    out = _sampling("eval", e) + _ranges(
        "eval",
        e,
        [
            ("num_problems", _at_least(0), ">= 0 (0 = all)"),
            ("bootstrap_samples", _at_least(0), ">= 0"),
            ("grade_workers", _at_least(1), ">= 1"),
            ("repetition_penalty", _positive, "> 0"),
            ("benchmarks", bool, "a non-empty list"),
        ],
    )
    for name in e.benchmarks:
        if name == BUILTIN or not check_paths:
            continue
        if name in BENCHMARKS and not (Path(e.data_dir) / BENCHMARKS[name].path).is_file():
            out.append(
                f"eval.benchmarks: {name!r} needs {Path(e.data_dir) / BENCHMARKS[name].path}, which is missing "
                "(set eval.data_dir to the shared data folder)"
            )
        elif name not in BENCHMARKS and not Path(name).exists():
            out.append(
                f"eval.benchmarks: {name!r} is neither a known name ({', '.join(benchmark_names())}) nor an existing file"
            )
    return out + _engine(cfg, "eval", e.max_tokens)
