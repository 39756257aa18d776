"""`palign compare`: P-ALIGN and its baselines in one run directory on shared stages, then one Table-1 report.

Run as: palign compare jobs/configs/compare_mini.yaml [--methods palign,full_cot,fixed_ratio:0.25] [key=value ...]

Every method is the ordinary pipeline (`palign_ray.pipeline.run_pipeline`) with its own `run.method`
(`fixed_ratio:R` also sets judge.fixed_ratio=R). Stage hashes decide what is shared: a (stage, hash)
pair gets one directory, so problems and teacher run once, truncate once for the methods that judge,
and a later method finds those stages done (their manifests) and skips them. Directories: a stage
with one hash across all compared methods lives in `<run_dir>/<stage>`; otherwise each hash in
`<run_dir>/methods/<first method with it>/<stage>`. Rerunning the same command resumes (placement
is a function of the config and the method list). The report goes to `<run_dir>/compare/`.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from palign_ray.config import Config

log = logging.getLogger(__name__)

DEFAULT_METHODS = ("palign", "full_cot")
BASELINE = "full_cot"  # paired differences are taken against it, as in the paper's Table 1


@dataclass(frozen=True)
class MethodRun:
    """One compared method: its label (`fixed_ratio:0.25`), its config, stage hashes and stage directories."""

    label: str
    cfg: Config
    hashes: dict[str, str]
    dirs: dict[str, Path]


def method_config(cfg: Config, label: str) -> Config:
    """`palign`, `palign:rollout`, `full_cot`, `prefix_only`, `continuation_only`, `fixed_ratio` or `fixed_ratio:R` → that run's config."""
    from typing import get_args, get_type_hints

    from palign_ray.config import RunConfig

    method, _, arg = label.partition(":")
    allowed = get_args(get_type_hints(RunConfig)["method"])  # the Literal's choices
    if method not in allowed:
        raise ValueError(
            f"unknown method {label!r}; methods are {list(allowed)} (fixed_ratio:R sets judge.fixed_ratio=R)"
        )
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, method=method))  # type: ignore[arg-type]  # checked against the Literal above
    if method == "palign" and arg == "rollout":
        # issue 28's variant judge (not the paper's self-judging prompt): the student's continuations decide
        judge = dataclasses.replace(
            cfg.judge, verdict="rollout", calibration="absolute", isotonic=False, votes=1
        )
        return dataclasses.replace(cfg, judge=judge)
    if arg:
        if method != "fixed_ratio":
            raise ValueError(
                f"method {label!r}: only fixed_ratio (fixed_ratio:0.25) and palign:rollout take an argument"
            )
        try:
            ratio = float(arg)
        except ValueError:
            raise ValueError(f"method {label!r}: {arg!r} is not a ratio in (0, 1]") from None
        if not 0 < ratio <= 1:
            raise ValueError(f"method {label!r}: the ratio must be in (0, 1]")
        cfg = dataclasses.replace(cfg, judge=dataclasses.replace(cfg.judge, fixed_ratio=ratio))
    return cfg


def method_labels(cfg: Config, methods: list[str] | None) -> list[str]:
    """The --methods list, else run.methods, else DEFAULT_METHODS; canonical labels, no duplicates."""
    raw = methods or list(cfg.run.methods) or list(DEFAULT_METHODS)
    labels = []
    for m in raw:
        m = m.strip()
        if m == "fixed_ratio":  # the bare name means the configured ratio; the label says which
            m = f"fixed_ratio:{cfg.judge.fixed_ratio:g}"
        elif m.startswith("fixed_ratio:"):
            m = (
                f"fixed_ratio:{float(m.partition(':')[2]):g}"
                if _is_float(m.partition(":")[2])
                else m
            )
        labels.append(m)
    dup = sorted({m for m in labels if labels.count(m) > 1})
    if dup:
        raise ValueError(f"methods listed twice: {dup}")
    if len(labels) < 2:
        raise ValueError(f"compare needs at least two methods, got {labels}")
    return labels


def _is_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _dir_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", label)


def plan_compare(cfg: Config, labels: list[str]) -> list[MethodRun]:
    """Each method's config, stage hashes and directories; equal (stage, hash) pairs share one directory."""
    from palign_ray.pipeline import effective_config, stage_hashes, stages_for

    cfgs = {m: effective_config(method_config(cfg, m)) for m in labels}
    hashes = {m: stage_hashes(c, stages_for(c)) for m, c in cfgs.items()}
    run_dir = Path(cfg.run.run_dir)
    where: dict[tuple[str, str], Path] = {}
    stages = dict.fromkeys(s for m in labels for s in hashes[m])
    for stage in stages:
        owners: dict[str, str] = {}  # hash → first method that has it
        for m in labels:
            if stage in hashes[m]:
                owners.setdefault(hashes[m][stage], m)
        for h, owner in owners.items():
            where[stage, h] = (
                run_dir / stage
                if len(owners) == 1
                else run_dir / "methods" / _dir_name(owner) / stage
            )
    return [
        MethodRun(m, cfgs[m], hashes[m], {s: where[s, h] for s, h in hashes[m].items()})
        for m in labels
    ]


def run_compare(
    cfg: Config, methods: list[str] | None = None, stages: list[str] | None = None
) -> dict[str, Any]:
    """Run (or resume) every method's pipeline on shared stages, then write the report; returns compare.json's dict."""
    from palign_ray.artifacts import write_json
    from palign_ray.config import to_dict
    from palign_ray.pipeline import run_pipeline

    runs = plan_compare(cfg, method_labels(cfg, methods))
    out = Path(cfg.run.run_dir) / "compare"
    out.mkdir(parents=True, exist_ok=True)
    write_json(
        out / "config.json", to_dict(cfg)
    )  # run_pipeline's <run_dir>/config.json is the last method's
    write_json(
        out / "plan.json",
        {r.label: {s: {"hash": r.hashes[s], "dir": str(r.dirs[s])} for s in r.dirs} for r in runs},
    )
    from palign_ray.checks import validate_plan

    for r in (
        runs
    ):  # every method's settings before the first stage runs (run_pipeline checks its own again)
        validate_plan(r.cfg, [s for s in r.dirs if not stages or s in stages])
    from palign_ray.console import CONSOLE

    for r in runs:
        log.info("method %s", r.label, extra=CONSOLE)
        log.info("method %s: %s", r.label, ", ".join(f"{s}→{d}" for s, d in r.dirs.items()))
        run_pipeline(r.cfg, stages, dirs=r.dirs, report=False)
    from palign_ray.compare.report import write_compare_report

    labels = [r.label for r in runs]
    return write_compare_report(
        cfg, runs, out, baseline=BASELINE if BASELINE in labels else labels[0]
    )
