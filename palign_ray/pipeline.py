"""The spine: problems → teacher → truncate → align → sft_data → train → (base_eval) → eval, resumable, one directory per stage.

Run as: palign run jobs/configs/default.yaml [--stages a,b] [key=value ...]

`STAGES` is the whole flow: each row carries a whole stage (the stages whose output it reads, the
config it depends on, whether it runs engine pools, the function that runs it, its engine section, plan
check, the output readers open and its summary words); `METHODS` says which stages each method leaves
out. Readers (checks, console, report, compare) ask the rows, never branch on names. Every stage writes
`<run_dir>/<stage>/` (committed parts, quarantine/ with reasons, manifest.json last). Re-running
resumes: a stage whose manifest carries the current config hash is skipped; an interrupted row stage
processes only the problem_ids with no committed row yet. Hashes are chained, so a changed setting
invalidates its stage and every stage after it, and a stage refuses input made under another config.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from palign_ray import checks, summaries
from palign_ray.artifacts import Manifest, StageDir, read_manifest, write_json
from palign_ray.config import Config, config_hash, to_dict

if TYPE_CHECKING:
    from palign_ray.judge.search import SearchMode

log = logging.getLogger(__name__)


class PipelineError(RuntimeError):
    """A stage cannot go on (no rows, stale input, failed rows to retry); the message names the stage and the fix."""


@dataclass(frozen=True)
class StageRun:
    """What a stage function gets: the config, its own directory and hash, and its input stages' directories."""

    cfg: Config
    sd: StageDir
    config_hash: str
    inputs: dict[str, StageDir]
    run_dir: Path

    def input_output(self, name: str) -> Path:
        """What this stage reads of its input stage `name` (the row's output inside its directory)."""
        return output_in(self.inputs[name].root, name)


@dataclass(frozen=True)
class Stage:
    """One stage, whole: what it reads and depends on, how it runs, what it leaves and how it is told."""

    name: str
    # stages whose output this one reads (a skipped one is replaced by its own input)
    inputs: tuple[str, ...]
    # config sections ("judge") or fields ("sft.model") whose change invalidates it
    keys: tuple[str, ...]
    # holds hardware through Ray actors (vLLM pools, Ray Train ranks): the next stage waits until the
    # stage has released it
    hardware: bool
    run: Callable[[StageRun], dict[str, Any]]  # does the work; returns the manifest's extra fields
    engine_section: str | None = None  # the config section whose `.engine` sets its pools
    check: Callable[[Config, bool], list[str]] | None = None  # its settings, before anything runs
    # config keys of the models it loads (checked before anything runs)
    models: tuple[str, ...] = ()
    output: str = ""  # what readers open inside its directory ("": the committed parts)
    counts_rows: bool = True  # its manifest counts rows in → out (not a model, not an evaluation)
    tokens: bool = False  # its commit markers' summaries carry prompt/cached/generated token counts
    evaluation: bool = False  # its output is one evaluation (metrics.json, samples.jsonl, .done)
    summary: Callable[[Mapping[str, Any]], str] | None = None  # its own words on the console line
    # the report's (in, out) cells where they are not the manifest's row counts
    cells: Callable[[Mapping[str, Any]], tuple[Any, Any] | None] | None = None
    # what it reads besides config and inputs (hashed)
    digest: Callable[[Config], str] | None = None
    gate: Callable[[Config, Manifest], None] | None = None  # may stop the run after it, done or not


@dataclass(frozen=True)
class Method:
    """One `run.method`: the stages it leaves out, the judge it forces and what it trains on."""

    name: str
    sft_target: str  # what sft_data builds from each row (palign_ray.sft.records.build_response)
    skips: frozenset[str] = frozenset()  # stages it leaves out (the next one reads their input)
    judge_search: SearchMode | None = None  # judge.search it forces
    prefix_ratio: float | None = None  # the kept share of every trace where the method fixes it


# --------------------------------------------------------------------------------------------
# Stage bodies (stage modules imported lazily: they pull Ray/vLLM/torch)


def run_problems(s: StageRun) -> dict[str, Any]:
    from palign_ray.artifacts import uniform_rows
    from palign_ray.decontam import screen_problems
    from palign_ray.problems import load_problems, load_summary

    rows, quar = load_problems(s.cfg.problems)
    rows, screened, screen = screen_problems(rows, s.cfg)
    quar = uniform_rows(quar + screened)
    s.sd.reset()
    _prepare(s.sd, s.config_hash)
    s.sd.write_part(rows, quar)
    _check_not_empty("problems", s.sd)
    summary = {**load_summary(rows, quar), "screen": screen}
    return {"num_input": len(rows) + len(quar), "summary": summary}


def _input_digest(cfg: Config) -> str:
    """What the problems stage reads besides its config: the content of its input file(s), so an
    edited file is read again on rerun, and, when it decontaminates, the benchmarks it screens
    against (their settings and files: an added benchmark or an edited file screens again).

    Empty for the built-in problems without decontamination, and for paths that do not exist
    (the plan checks refuse those runs before any stage).
    """
    p, e = cfg.problems, cfg.eval
    files: list[tuple[str, Path]] = []
    if p.source == "file" and p.path and Path(p.path).exists():
        root = Path(p.path)
        found = sorted(f for f in root.rglob("*") if f.is_file()) if root.is_dir() else [root]
        files += [(str(f.relative_to(root) if root.is_dir() else f.name), f) for f in found]
    screen = ""
    if p.decontaminate:
        from palign_ray.benchmarks import BENCHMARKS

        screen = json.dumps(
            [e.benchmarks, e.data_dir, e.num_problems, e.builtin_seed, e.builtin_split]
        )
        for name in e.benchmarks:
            f = Path(e.data_dir) / BENCHMARKS[name].path if name in BENCHMARKS else Path(name)
            if f.is_file():
                files.append((f"benchmark:{name}", f))
    if not files and not screen:
        return ""
    digest = hashlib.sha256(screen.encode())
    for label, f in files:
        digest.update(label.encode())
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    return f"|input={digest.hexdigest()[:16]}"


def _row_stage(
    job_of: Callable[[Config, list[Path]], Any],
) -> Callable[[StageRun], dict[str, Any]]:
    """A streaming row stage: its input's committed parts through `job_of(cfg, input files)` (see palign_ray.streaming)."""

    def run(s: StageRun) -> dict[str, Any]:
        from palign_ray.streaming import run_stream

        (src,) = s.inputs.values()
        job = job_of(s.cfg, src.output_files())
        res = run_stream(
            job,
            src.output_files(),
            s.sd,
            progress=lambda total, done: _progress(job.stage, total, done),
        )
        if res.retry_failed:
            reasons = sorted({r["reason"] for r in res.retry_failed})
            raise PipelineError(
                f"stage '{job.stage}': {len(res.retry_failed)} problems failed with {reasons} after "
                f"{res.passes} passes (first: {res.retry_failed[0].get('detail', '')[:300]}); "
                "nothing was committed for them: rerun the same command to retry them"
            )
        _check_not_empty(job.stage, s.sd)
        log.info(
            "stage %s: %d parts, %d engine starts (%d actors, %d wrote parts), %d rows processed now, "
            "%d done before",
            job.stage,
            res.num_parts,
            res.engine_starts,
            job.ray_cfg.num_actors,
            res.actors_used,
            res.num_processed,
            res.num_done_before,
        )
        return {
            "num_input": res.num_input,
            "engine_starts": res.engine_starts,
            "actors_used": res.actors_used,
            "passes": res.passes,
            "num_done_before": res.num_done_before,
            "summaries": [c["summary"] for c in s.sd.commits()],
        }

    return run


def _teacher_job(cfg: Config, files: list[Path]) -> Any:
    from palign_ray.teacher import teacher_job

    return teacher_job(cfg)


def _judge_job(cfg: Config, files: list[Path]) -> Any:
    from palign_ray.judge.stage import judge_job
    from palign_ray.streaming import input_ids

    # the audit's seeded sample is drawn from every input id (only that column is read)
    return judge_job(cfg, ids=input_ids(files) if cfg.judge.audit_problems else ())


def run_truncate(s: StageRun) -> dict[str, Any]:
    """The judge as a streaming row stage, then its measurement (audit, known cuts, validity) from the parts."""
    from palign_ray.judge.audit import audit_off_reason
    from palign_ray.judge.measure import measure_stage_dir
    from palign_ray.judge.stage import stage_judge_config

    info = _row_stage(_judge_job)(s)
    info["judge_audit"] = measure_stage_dir(
        s.sd,
        judged=stage_judge_config(s.cfg).search != "fixed_ratio",
        fixed_ratio=s.cfg.judge.fixed_ratio,
        seed=s.cfg.run.seed,
        audit_note=audit_off_reason(s.cfg),
    )
    return info


def check_judge_valid(cfg: Config, manifest: Manifest) -> None:
    """judge.on_invalid=fail: an invalid judge stops the pipeline after truncate (its manifest is kept)."""
    verdict = (manifest.extra.get("judge_audit") or {}).get("validity") or {}
    if cfg.judge.on_invalid == "fail" and verdict.get("status") == "invalid":
        raise PipelineError(
            f"stage 'truncate': the judge is invalid ({'; '.join(verdict.get('reasons', []))}); "
            "judge.on_invalid=fail stops here, before align. The cuts and their audit are in "
            "truncate/manifest.json; set judge.on_invalid=warn to go on anyway"
        )


def _align_job(cfg: Config, files: list[Path]) -> Any:
    from palign_ray.align import align_job

    return align_job(cfg)


def run_sft_data(s: StageRun) -> dict[str, Any]:
    """Tokenizing as a streaming row stage: each input part becomes a shard part on a worker (palign_ray.sft.stage)."""
    from palign_ray.sft.stage import build_stage_shards

    (src,) = s.inputs.values()
    shards = StageDir(output_in(s.sd.root, "sft_data"))
    summary, res = build_stage_shards(s.cfg, s.cfg.run.method, src.output_files(), shards)
    if res.retry_failed:
        raise PipelineError(
            f"stage 'sft_data': {len(res.retry_failed)} rows have no committed shard part after "
            f"{res.passes} passes: rerun the same command to tokenize them"
        )
    if not summary["num_out"]:
        raise PipelineError(
            f"stage 'sft_data' produced no examples ({summary['reasons']}); see {shards.quarantine_dir}"
        )
    log.info(
        "stage sft_data: %d shard parts (%d tokenized now, %d rows done before), %d examples, "
        "%d quarantined %s",
        len(summary["shards"]),
        res.num_parts,
        res.num_done_before,
        summary["num_out"],
        summary["num_quarantined"],
        summary["reasons"],
    )
    return {
        "num_input": summary["num_in"],
        "num_output": summary["num_out"],
        "num_quarantined": summary["num_quarantined"],
        "reasons": summary["reasons"],
        "num_parts": len(summary["shards"]),
        "num_done_before": res.num_done_before,
        "summary": summary,
    }


def run_train(s: StageRun) -> dict[str, Any]:
    from palign_ray.sft.checkpoints import run_dir_of
    from palign_ray.sft.train import run_sft

    data_dir = s.input_output("sft_data")
    check_shards_model(data_dir, s.cfg.sft.model)
    out = output_in(s.sd.root, "train")
    resume = run_dir_of(
        out
    ).is_dir()  # an interrupted training continues from its last complete checkpoint
    sft = dataclasses.replace(s.cfg.sft, resume=resume or s.cfg.sft.resume)
    return {"metrics": run_sft(sft, data_dir, out, seed=s.cfg.run.seed, ray_cfg=s.cfg.ray)}


def check_shards_model(data_dir: Path, model: str) -> None:
    """Shards hold token ids of one tokenizer: training another model on them would be silent garbage."""
    from palign_ray.sft.data import read_meta

    made_for = read_meta(data_dir).get("model")
    if made_for is not None and made_for != model:
        raise PipelineError(
            f"stage 'train': the SFT shards in {data_dir} were tokenized for {made_for!r}, not sft.model="
            f"{model!r}; rerun stage sft_data"
        )


def run_base_eval(s: StageRun) -> dict[str, Any]:
    """The untrained student on the eval benchmarks.

    Its own stage because it depends on eval, engine and sft.model only (no input): every method of a
    `palign compare` has the same hash for it, so the base student is evaluated once per comparison.
    """
    base = _eval_once(s.cfg, output_in(s.sd.root, "base_eval"), s.cfg.sft.model)
    return {"base": _headline(base)}


def run_eval(s: StageRun) -> dict[str, Any]:
    """The trained student, on the same benchmarks, samples and seed as base_eval (whose headline it repeats)."""
    trained = _eval_once(s.cfg, output_in(s.sd.root, "eval"), str(s.input_output("train")))
    base = read_manifest(s.inputs["base_eval"].manifest_path).extra.get("base")
    return {"base": base, "trained": _headline(trained)}


def _eval_once(cfg: Config, out_dir: Path, model: str) -> dict[str, Any]:
    """Evaluate `model` unless an earlier, interrupted attempt of this stage already finished it.

    The stage directory only holds results of the current config (`_prepare` clears it otherwise), and
    `.done` is written after every file of the evaluation, so a kill mid-way recomputes only this model.
    """
    from palign_ray.eval.stage import evaluate

    done = out_dir / ".done"
    if done.is_file() and (out_dir / "metrics.json").is_file():
        log.info("stage eval: %s already evaluated in %s, reusing", model, out_dir)
        return json.loads((out_dir / "metrics.json").read_text())
    metrics = evaluate(cfg, out_dir, model=model)
    done.write_text(model)
    return metrics


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in ("model", "average", "benchmarks") if k in metrics}


# --------------------------------------------------------------------------------------------
# The flow


AUDIT_ALIGN_KEYS = tuple(
    f"align.{k}"
    for k in ("model", "temperature", "top_p", "repetition_penalty", "max_tokens", "grader")
)

# A few lines per stage read as a table; one argument a line would not.
# fmt: off
STAGES: tuple[Stage, ...] = (
    Stage(
        "problems", (), ("problems",), False, run_problems,
        check=checks.check_problems, summary=summaries.problems_line,
        digest=_input_digest,
    ),
    Stage(
        "teacher", ("problems",), ("teacher", "engine"), True, _row_stage(_teacher_job),
        engine_section="teacher", check=checks.check_teacher, models=("teacher.model",),
        tokens=True,
    ),
    # The judge audit continues with align's prompt, sampling and grader: those settings are its inputs too.
    Stage(
        "truncate", ("teacher",), ("judge", "engine", *AUDIT_ALIGN_KEYS), True, run_truncate,
        engine_section="judge", check=checks.check_truncate, models=("judge.model",),
        tokens=True, gate=check_judge_valid,
    ),
    Stage(
        "align", ("truncate",), ("align", "engine"), True, _row_stage(_align_job),
        engine_section="align", check=checks.check_align, models=("align.model",), tokens=True,
    ),
    # Shards hold sft.model's token ids and chat template, and the method decides what a record is.
    Stage(
        "sft_data", ("align",), ("align", "run.method", "sft.model"), False, run_sft_data,
        check=checks.check_sft_data, models=("sft.model",), output="shards",
    ),
    Stage(
        "train", ("sft_data",), ("sft",), True, run_train,
        check=checks.check_train, models=("sft.model",), output="model", counts_rows=False,
        summary=summaries.train_line, cells=summaries.train_cells,
    ),
    # base_eval and eval share one check (their settings are eval's): reported once as base_eval/eval.
    Stage(
        "base_eval", (), ("eval", "engine", "sft.model"), True, run_base_eval,
        engine_section="eval", check=checks.check_eval, models=("sft.model",), output="base",
        counts_rows=False, evaluation=True, summary=summaries.eval_line,
        cells=summaries.eval_cells,
    ),
    Stage(
        "eval", ("train", "base_eval"), ("eval", "engine"), True, run_eval,
        engine_section="eval", check=checks.check_eval, output="trained", counts_rows=False,
        evaluation=True, summary=summaries.eval_line, cells=summaries.eval_cells,
    ),
)
# fmt: on
STAGE_NAMES = tuple(s.name for s in STAGES)
_BY_NAME = {s.name: s for s in STAGES}

METHODS: tuple[Method, ...] = (
    Method("palign", "the judged prefix in markers, then the student's filtered continuation"),
    Method(
        "full_cot",
        "the whole teacher trace (a boxed final answer appended where it has none)",
        skips=frozenset({"truncate", "align"}),
        prefix_ratio=1.0,
    ),
    # a cut at a fixed share of the sentences: no judge runs
    Method(
        "fixed_ratio",
        "the fixed-ratio prefix in markers, then the student's continuation from it",
        judge_search="fixed_ratio",
    ),
    Method(
        "prefix_only",
        "the judged prefix in markers, then a boxed final answer (no continuation)",
        skips=frozenset({"align"}),
    ),
    Method("continuation_only", "the student's filtered continuation alone (no prefix)"),
)
_METHOD_BY_NAME = {m.name: m for m in METHODS}


def stage_row(name: str) -> Stage:
    """The row of stage `name` (a ValueError naming the stages for any other name)."""
    if name not in _BY_NAME:
        raise ValueError(f"unknown stage {name!r}; stages are {list(STAGE_NAMES)}")
    return _BY_NAME[name]


def method_row(name: str) -> Method:
    """The row of method `name` (`run.method`)."""
    if name not in _METHOD_BY_NAME:
        raise ValueError(f"unknown method {name!r}; methods are {list(_METHOD_BY_NAME)}")
    return _METHOD_BY_NAME[name]


def output_in(stage_dir: str | Path, name: str) -> Path:
    """What readers open of stage `name` placed at `stage_dir`: the row's output inside it."""
    return Path(stage_dir) / stage_row(name).output


def stage_dirs(run_dir: str | Path, names: Iterable[str]) -> dict[str, Path]:
    """Where a plain run places its stages: `<run_dir>/<stage>` (`palign compare` places them itself)."""
    return {name: Path(run_dir) / name for name in names}


def stage_output(dirs: Mapping[str, Path], name: str) -> Path:
    """What readers open of stage `name`, placed as `dirs` says (a plain run's or a compared method's)."""
    return output_in(dirs[name], name)


def effective_config(cfg: Config) -> Config:
    """Method-specific settings: the judge search a method forces (fixed_ratio truncation needs no judge)."""
    search = method_row(cfg.run.method).judge_search
    if search is not None:
        return dataclasses.replace(cfg, judge=dataclasses.replace(cfg.judge, search=search))
    return cfg


def stages_for(cfg: Config) -> list[Stage]:
    """The method's stages, each reading the nearest planned stage upstream of its declared input."""
    skip = method_row(cfg.run.method).skips

    def planned(name: str) -> tuple[str, ...]:
        return (
            (name,)
            if name not in skip
            else tuple(x for i in stage_row(name).inputs for x in planned(i))
        )

    return [
        dataclasses.replace(s, inputs=tuple(x for i in s.inputs for x in planned(i)))
        for s in STAGES
        if s.name not in skip
    ]


def _key_hash(cfg: Config, key: str) -> str:
    """A config section's hash (hashed fields only), or one field's value ("sft.model")."""
    section, _, name = key.partition(".")
    value = getattr(cfg, section)
    return (
        config_hash(value)
        if not name
        else json.dumps(getattr(value, name), sort_keys=True, default=str)
    )


def stage_hashes(cfg: Config, plan: list[Stage]) -> dict[str, str]:
    """Chained hashes: a stage's hash covers its config keys, the run seed and the hashes of the stages it reads."""
    hashes: dict[str, str] = {}
    root = f"seed={cfg.run.seed}"  # not the method: problems and teacher do not depend on it
    for s in plan:
        h = hashlib.sha256("|".join(_key_hash(cfg, k) for k in s.keys).encode()).hexdigest()[:16]
        digest = s.digest(cfg) if s.digest is not None else ""
        upstream = ",".join(hashes[i] for i in s.inputs) or root + digest
        hashes[s.name] = hashlib.sha256(f"{s.name}:{h}:{upstream}".encode()).hexdigest()[:16]
    return hashes


# --------------------------------------------------------------------------------------------
# Running


def _prepare(sd: StageDir, h: str) -> None:
    """Start or resume a stage dir; a dir left by another config is cleared (its rows are stale)."""
    marker = sd.root / ".config_hash"
    if sd.root.exists() and (not marker.is_file() or marker.read_text().strip() != h):
        log.info("stage %s: config changed, recomputing", sd.root.name)
        sd.reset()
    sd.root.mkdir(parents=True, exist_ok=True)
    marker.write_text(h)


def _check_not_empty(stage: str, sd: StageDir) -> None:
    commits = sd.commits()
    if not sum(c.get("num_output", 0) for c in commits):
        reasons: Counter[str] = Counter()
        for c in commits:
            reasons.update(c.get("reasons", {}))
        raise PipelineError(
            f"stage '{stage}' produced no output rows ({sum(reasons.values())} quarantined: {dict(reasons)}); "
            f"see {sd.quarantine_dir} for details"
        )


def _progress(stage: str, total: int, done: int) -> Any:
    from tqdm import tqdm

    # off when stderr is not a terminal (job logs)
    return tqdm(
        total=total,
        initial=done,
        desc=f"stage {stage}",
        unit="problem",
        disable=None,
        mininterval=1.0,
    )


def run_pipeline(
    cfg: Config,
    stages: list[str] | None = None,
    *,
    dirs: Mapping[str, Path] | None = None,
    report: bool = True,
) -> dict[str, Any]:
    """Run (or resume) the configured stages; returns {stage: manifest}.

    `dirs` places stages elsewhere than `<run_dir>/<stage>` (e.g. `palign compare` shares the stages
    whose hash is the same for several methods); `report=False` skips `<run_dir>/report.md`.
    """
    cfg = effective_config(cfg)
    plan = stages_for(cfg)
    unknown = sorted(set(stages or []) - set(STAGE_NAMES))
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages are {list(STAGE_NAMES)}")
    _validate(cfg, [s.name for s in plan if not stages or s.name in stages])
    hashes = stage_hashes(cfg, plan)
    run_dir = Path(cfg.run.run_dir)
    where = {
        name: Path((dirs or {}).get(name, d))
        for name, d in stage_dirs(run_dir, [s.name for s in plan]).items()
    }
    pending = [
        s
        for s in plan
        if (not stages or s.name in stages) and not StageDir(where[s.name]).is_done(hashes[s.name])
    ]
    check_gpu_drivers(cfg, pending)  # like the settings, before anything is written
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", to_dict(cfg))
    manifests: dict[str, Any] = {}
    for stage in plan:
        if stages and stage.name not in stages:
            continue
        sd = StageDir(where[stage.name])
        if sd.is_done(hashes[stage.name]):
            log.info("stage %s: done (manifest present), skipping", stage.name)
        else:
            inputs = {
                i: _current_input(stage.name, StageDir(where[i]), hashes[i]) for i in stage.inputs
            }
            _run_stage(stage, StageRun(cfg, sd, hashes[stage.name], inputs, run_dir))
        manifests[stage.name] = sd.manifest()
        if stage.gate is not None:
            stage.gate(cfg, read_manifest(sd.manifest_path))
    # the report's headline is the evaluation: written when an evaluation stage was asked for
    if report and (not stages or any(stage_row(s).evaluation for s in stages)):
        from palign_ray.report import write_run_report

        write_run_report(run_dir, cfg, [s.name for s in plan])
    return manifests


def _validate(cfg: Config, names: list[str]) -> None:
    """Every planned stage's settings, before the first stage runs (not hours later on a cluster)."""
    from palign_ray.checks import validate_plan

    validate_plan(cfg, names)


def check_gpu_drivers(cfg: Config, stages: list[Stage]) -> None:
    """On a cluster with GPUs, every GPU node's NVIDIA driver new enough for the lock, before any stage."""
    from palign_ray.hardware import driver_problems
    from palign_ray.ray_env import gpu_driver_versions, init_ray

    if not any(s.hardware for s in stages):
        return
    init_ray(cfg.ray)
    problems = driver_problems(gpu_driver_versions())
    if problems:
        raise PipelineError("; ".join(problems) + "; nothing was run")


def _current_input(stage: str, src: StageDir, h: str) -> StageDir:
    """An input stage finished under the current config, or a PipelineError naming what to rerun."""
    if not src.is_done():
        raise PipelineError(
            f"stage '{stage}' needs the output of '{src.root.name}', which has not finished; "
            f"run it first (drop --stages or add {src.root.name})"
        )
    if not src.is_done(h):
        raise PipelineError(
            f"stage '{stage}' needs the output of '{src.root.name}', which was made under another "
            f"config; rerun it first (--stages {src.root.name},{stage}, or drop --stages)"
        )
    return src


def _run_stage(stage: Stage, run: StageRun) -> None:
    from palign_ray.ray_env import device_snapshot, free_resources, init_ray

    t0 = time.perf_counter()
    _prepare(run.sd, run.config_hash)
    log.info("stage %s: start", stage.name)
    if stage.hardware:
        init_ray(
            run.cfg.ray
        )  # before the stage, so the resources it frees again can be checked after it
    before = free_resources()
    holders = device_snapshot() if stage.hardware else {}  # GPU users that are not the stage's
    try:
        info = stage.run(run)
    finally:
        if stage.hardware:
            _release(stage.name, before, holders)
    run.sd.write_manifest(config_hash=run.config_hash, wall_s=time.perf_counter() - t0, **info)
    _log_summary(stage, run)
    log.info("stage %s: finished in %.1f s", stage.name, time.perf_counter() - t0)


def _log_summary(stage: Stage, run: StageRun) -> None:
    """The stage's console line from its manifest, with what the actors saw (engine restarts, degenerate judge)."""
    from palign_ray.console import CONSOLE, summary_lines

    for level, line in summary_lines(stage.name, run.sd.manifest(), run.cfg):
        log.log(level, line, extra=CONSOLE)


def _release(stage: str, before: dict[str, float], holders: dict[str, set[int]]) -> None:
    """Hand the hardware on: wait until the stage's actors (vLLM engines, Ray Train ranks) have exited
    and no process that appeared during the stage holds GPU memory (`holders`: those before it)."""
    from palign_ray.ray_env import wait_for_device_memory, wait_for_release

    waited = wait_for_release(before)
    waited += wait_for_device_memory(holders)
    log.info("stage %s: hardware released (waited %.1f s for %s)", stage, waited, before)
