"""Evaluation: paper-prompt generation on the vLLM pool, per-sample grading, metrics, reports, CLI.

Run as: palign eval --model default --benchmarks gsm8k,math500 --output runs/eval [eval.num_problems=25 ...]
        palign grade outputs.jsonl [--question-field prompt_ori] [--answer-field answer] [--output-field output]
        palign eval --compare a/metrics.json b/metrics.json
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from palign_ray import records as R
from palign_ray.artifacts import quarantine_row, read_rows, write_json, write_jsonl
from palign_ray.benchmarks import BENCHMARK, load_benchmark
from palign_ray.config import Config, EvalConfig, stage_engine, to_dict
from palign_ray.fields import (
    DUPLICATE,
    decode_list,
    gold_answer,
    looks_serialised_list,
    missing,
    read_id,
    read_text,
)
from palign_ray.grading import extract_boxed, grade
from palign_ray.metrics import ProblemResult, macro_average, summarize

log = logging.getLogger(__name__)

STAGE = "eval"
# The authors' evaluation prompt, verbatim: no space between the instruction and the problem.
INSTRUCTION = r"Please reason step by step, and put your final answer within \boxed{}."

# Per-sample label columns (samples.jsonl / labels.jsonl).
SAMPLE_INDEX = "sample_index"
CORRECT = "correct"
LABEL = "label"  # 0/1, the authors' name
EXTRACTED = "extracted"
GOLD = "gold"
FINISH_REASON = "finish_reason"
NUM_TOKENS = "num_generated_tokens"
NUM_CHARS = "num_chars"
GENERATION = "generation"
ANSWER_SOURCE = "answer_source"  # "boxed" | "text" (paper grader only) | "" when incorrect
REFERENCE_LABEL = "reference_label"  # a label that came with the input file (palign grade)
# Quarantine reasons of problems that got no samples: they count as incorrect in the metrics.
GENERATION_FAILED = "generation_failed"
NO_GENERATION = "no_generation"
FAILED_REASONS = (GENERATION_FAILED, NO_GENERATION)


def build_prompt(problem: str) -> str:
    return INSTRUCTION + problem


# ---------------------------------------------------------------------------------------------
# Grading of generations (pure apart from the grading child processes)


def grade_samples(
    problems: list[dict[str, Any]], gen_rows: Iterable[dict[str, Any]], cfg: EvalConfig
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Join generation rows to problems on problem_id and grade every sample → (sample rows, quarantine)."""
    by_id = {p[R.PROBLEM_ID]: p for p in problems}
    jobs: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    seen: set[str] = set()
    for row in gen_rows:
        pid = str(row[R.PROBLEM_ID])
        problem = by_id.get(pid)
        if problem is None or pid in seen:
            bad.append(
                quarantine_row(
                    STAGE,
                    pid,
                    "unknown_problem_id",
                    "generation row matches no (or an already graded) problem",
                )
            )
            continue
        seen.add(pid)
        if row.get("error") or not row.get(R.GENERATIONS):
            bad.append(
                quarantine_row(
                    STAGE,
                    pid,
                    GENERATION_FAILED,
                    str(row.get("error") or "no generations"),
                    **{BENCHMARK: problem[BENCHMARK]},
                )
            )
            continue
        jobs += _sample_jobs(problem, row)
    for pid in sorted(set(by_id) - seen):
        bad.append(
            quarantine_row(
                STAGE,
                pid,
                NO_GENERATION,
                "the generation stage returned no row for this problem",
                **{BENCHMARK: by_id[pid][BENCHMARK]},
            )
        )
    return grade_jobs(jobs, cfg), bad


def _sample_jobs(problem: dict[str, Any], row: dict[str, Any]) -> list[dict[str, Any]]:
    gens = list(row[R.GENERATIONS])
    finish = list(row.get(R.FINISH_REASONS) or [""] * len(gens))
    tokens = list(row.get(R.NUM_GENERATED_TOKENS) or [None] * len(gens))
    refs = list(row.get(REFERENCE_LABEL) or [None] * len(gens))
    return [
        {
            BENCHMARK: problem[BENCHMARK],
            R.PROBLEM_ID: problem[R.PROBLEM_ID],
            SAMPLE_INDEX: i,
            GOLD: problem[R.ANSWER],
            FINISH_REASON: finish[i] if i < len(finish) else "",
            NUM_TOKENS: tokens[i] if i < len(tokens) else None,
            NUM_CHARS: len(text),
            REFERENCE_LABEL: refs[i] if i < len(refs) else None,
            GENERATION: text,
        }
        for i, text in enumerate(gens)
    ]


def grade_jobs(jobs: list[dict[str, Any]], cfg: EvalConfig) -> list[dict[str, Any]]:
    """Grade sample rows in a few threads (each grading thread owns its own math-verify child)."""

    def one(job: dict[str, Any]) -> dict[str, Any]:
        g = grade(job[GENERATION], job[GOLD], timeout_s=cfg.grade_timeout_s, mode=cfg.grader)
        boxed = extract_boxed(job[GENERATION])
        # "text" marks samples only the paper grader's whole-output math-verify found correct.
        source = "" if not g.correct else ("boxed" if g.extracted == boxed else "text")
        return {
            **job,
            CORRECT: g.correct,
            LABEL: int(g.correct),
            R.REASON: g.reason,
            EXTRACTED: g.extracted,
            ANSWER_SOURCE: source,
        }

    with ThreadPoolExecutor(max_workers=max(1, cfg.grade_workers)) as pool:
        out = list(pool.map(one, jobs))
    for r in out:  # drop empty optional columns so files stay readable
        if r[REFERENCE_LABEL] is None:
            del r[REFERENCE_LABEL]
    return out


def problem_results(samples: list[dict[str, Any]]) -> dict[str, list[ProblemResult]]:
    """Sample rows → ProblemResults grouped by benchmark (samples ordered by sample_index)."""
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for s in samples:
        grouped.setdefault(s[BENCHMARK], {}).setdefault(s[R.PROBLEM_ID], []).append(s)
    out: dict[str, list[ProblemResult]] = {}
    for bench, problems in grouped.items():
        out[bench] = []
        for pid, rows in problems.items():
            rows = sorted(rows, key=lambda r: r[SAMPLE_INDEX])
            tokens = (
                tuple(r[NUM_TOKENS] for r in rows)
                if all(r.get(NUM_TOKENS) is not None for r in rows)
                else ()
            )
            out[bench].append(
                ProblemResult(
                    pid,
                    tuple(bool(r[CORRECT]) for r in rows),
                    num_tokens=tokens,
                    num_chars=tuple(r[NUM_CHARS] for r in rows),
                    finish_reasons=tuple(r[FINISH_REASON] for r in rows if r.get(FINISH_REASON)),
                    reasons=tuple(r[R.REASON] for r in rows),
                )
            )
    return out


def failed_results(
    quarantined: Iterable[dict[str, Any]], num_samples: int
) -> dict[str, list[ProblemResult]]:
    """Problems whose generation failed (quarantine rows of grade_samples) as all-incorrect ProblemResults per benchmark."""
    out: dict[str, list[ProblemResult]] = {}
    for row in quarantined:
        if row[R.REASON] in FAILED_REASONS:
            out.setdefault(row[BENCHMARK], []).append(
                ProblemResult(row[R.PROBLEM_ID], (False,) * num_samples, failed=row[R.REASON])
            )
    return out


def _with_failed(
    graded: dict[str, list[ProblemResult]], failed: dict[str, list[ProblemResult]]
) -> dict[str, list[ProblemResult]]:
    return {b: graded.get(b, []) + failed.get(b, []) for b in sorted(set(graded) | set(failed))}


def compute_metrics(
    samples: list[dict[str, Any]],
    cfg: EvalConfig,
    seed: int = 0,
    failed: Iterable[dict[str, Any]] = (),
) -> dict[str, Any]:
    """Per-benchmark summaries plus their macro average (and agreement with reference labels if any).

    `failed`: grade_samples' quarantine rows; problems without samples count as incorrect (the paper's
    denominator is every problem) and are reported as num_failed_problems / failed_problem_rate.
    """
    lost = failed_results(failed, cfg.num_samples)
    per = {
        b: summarize(p, cfg.bootstrap_samples, seed)
        for b, p in _with_failed(problem_results(samples), lost).items()
    }
    out: dict[str, Any] = {"grader": cfg.grader, "benchmarks": per, "average": macro_average(per)}
    if cfg.grader == "paper":  # the strict numbers too: only the last boxed answer counts
        strict = [
            {**s, CORRECT: bool(s[CORRECT]) and s.get(ANSWER_SOURCE) == "boxed"} for s in samples
        ]
        out["boxed_only"] = {
            b: {k: m[k] for k in ("pass@k", "mean_accuracy", "pass@n_any_correct")}
            for b, p in _with_failed(problem_results(strict), lost).items()
            for m in [summarize(p, 0, seed)]
        }
    refs = [s for s in samples if s.get(REFERENCE_LABEL) is not None]
    if refs:
        out["reference_agreement"] = reference_agreement(refs, cfg, seed)
    return out


def reference_agreement(
    samples: list[dict[str, Any]], cfg: EvalConfig, seed: int
) -> dict[str, Any]:
    """How our labels compare with labels shipped in the input (e.g. the authors' `label`)."""
    ours = [int(bool(s[CORRECT])) for s in samples]
    theirs = [int(bool(s[REFERENCE_LABEL])) for s in samples]
    ref_samples = [{**s, CORRECT: bool(t)} for s, t in zip(samples, theirs, strict=True)]
    ref_metrics = {
        b: summarize(p, cfg.bootstrap_samples, seed)
        for b, p in sorted(problem_results(ref_samples).items())
    }
    return {
        "num_samples": len(ours),
        "agreement": sum(a == b for a, b in zip(ours, theirs, strict=True)) / len(ours),
        "ours_1_reference_0": sum(a > b for a, b in zip(ours, theirs, strict=True)),
        "ours_0_reference_1": sum(a < b for a, b in zip(ours, theirs, strict=True)),
        "reference_metrics": {
            b: {k: m[k] for k in ("pass@k", "mean_accuracy", "pass@n_any_correct")}
            for b, m in ref_metrics.items()
        },
        "disagreements": [
            {
                R.PROBLEM_ID: s[R.PROBLEM_ID],
                SAMPLE_INDEX: s[SAMPLE_INDEX],
                "ours": a,
                "reference": b,
                EXTRACTED: s[EXTRACTED],
                GOLD: s[GOLD],
                R.REASON: s[R.REASON],
            }
            for s, a, b in zip(samples, ours, theirs, strict=True)
            if a != b
        ],
    }


# ---------------------------------------------------------------------------------------------
# Reports


def _pct(x: Any) -> str:
    return "—" if x is None or x != x else f"{100 * float(x):.2f}"


def markdown_table(metrics: dict[str, Any]) -> str:
    """benchmark × pass@k (with 95% bootstrap intervals), the paper's conventions, lengths, truncation."""
    per = metrics["benchmarks"]
    ks = sorted({k for m in per.values() for k in m.get("pass@k", {})}, key=int)
    head = (
        ["benchmark", "problems", "n"]
        + [f"pass@{k}" for k in ks]
        + [
            "mean acc (paper Pass@1)",
            "any of n (paper Pass@n)",
            "first sample",
            "truncated",
            "mean tokens",
            "failed problems",
        ]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in per.items():
        cells = [name, str(m.get("num_problems", 0)), str(m.get("num_samples", 0))]
        for k in ks:
            v, ci = m.get("pass@k", {}).get(k), m.get("pass@k_ci95", {}).get(k)
            cells.append(f"{_pct(v)} [{_pct(ci[0])}, {_pct(ci[1])}]" if ci else _pct(v))
        cells += [
            _pct(m.get("mean_accuracy")),
            _pct(m.get("pass@n_any_correct")),
            _pct(m.get("first_sample_accuracy")),
            _pct(m.get("truncation_rate")),
            _num(m.get("mean_generation_tokens")),
            _failed(m),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    avg = metrics["average"]
    if len(per) > 1 and avg.get("num_benchmarks"):
        cells = ["**average**", str(avg["num_problems"]), ""] + [
            _pct(avg["pass@k"].get(k)) for k in ks
        ]
        cells += [
            _pct(avg.get("mean_accuracy")),
            _pct(avg.get("pass@n_any_correct")),
            _pct(avg.get("first_sample_accuracy")),
            _pct(avg.get("truncation_rate")),
            _num(avg.get("mean_generation_tokens")),
            _failed(avg),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _num(x: Any) -> str:
    return "—" if x is None or x != x else f"{float(x):.1f}"


def _failed(m: dict[str, Any]) -> str:
    """Failed problems as "count (rate%)"; "—" for metrics written before they were counted."""
    if "num_failed_problems" not in m:
        return "—"
    rate = m.get(
        "failed_problem_rate",
        m["num_failed_problems"] / m["num_problems"] if m.get("num_problems") else None,
    )
    return f"{m['num_failed_problems']} ({_pct(rate)}%)"


def write_report(
    out_dir: Path,
    metrics: dict[str, Any],
    samples: list[dict[str, Any]],
    quarantined: list[dict[str, Any]],
) -> None:
    """metrics.json, report.md, samples.jsonl, quarantine.jsonl and the PNG plots in `out_dir`."""
    from palign_ray.report_plots import plot_length_histogram, plot_pass_at_k

    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / "samples.jsonl", samples)
    write_jsonl(out_dir / "quarantine.jsonl", quarantined)
    write_json(out_dir / "metrics.json", metrics)
    plot_pass_at_k(metrics, out_dir / "pass_at_k.png")
    plot_length_histogram(samples, out_dir / "generation_length.png")
    md = [f"# Evaluation of `{metrics.get('model', '?')}`", "", markdown_table(metrics)]
    timing = metrics.get("timing")
    if timing:
        md += [
            f"Generation: {timing['generated_tokens']} tokens in {timing['generation_wall_s']:.1f} s "
            f"({timing['tokens_per_s']:.1f} tokens/s); total wall {timing['wall_s']:.1f} s.",
            "",
        ]
    md += [
        f"Quarantined problems: {len(quarantined)}.",
        "",
        "![pass@k](pass_at_k.png)",
        "",
        "![lengths](generation_length.png)",
        "",
    ]
    (out_dir / "report.md").write_text("\n".join(md))


def _metrics_file(path: Path) -> dict[str, Any]:
    """A metrics.json written by `palign eval`, or a ValueError naming the file and what is wrong."""
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e}); give the metrics.json of an eval run") from None
    ok = (
        isinstance(m, dict)
        and isinstance(m.get("benchmarks"), dict)
        and all(isinstance(s, dict) for s in m["benchmarks"].values())
        and isinstance(m.get("average", {}), dict)
    )
    if not ok:
        raise ValueError(
            f"{path}: not the metrics.json of an eval run (needs a 'benchmarks' object of "
            "per-benchmark objects)"
        )
    return m


def compare_table(paths: list[str]) -> str:
    """One Markdown table of several runs' metrics.json: pass@1 and pass@n per benchmark, plus the average."""
    runs = [(Path(p), _metrics_file(Path(p))) for p in paths]
    benches = sorted({b for _, m in runs for b in m["benchmarks"]})
    head = ["model"] + [f"{b} pass@1 / pass@n" for b in benches] + ["average pass@1 / pass@n"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for path, m in runs:
        label = f"{m.get('model', '?')} ({path.parent.name})"
        cells = [label]
        for b in benches:
            s = m["benchmarks"].get(b)
            cells.append(
                f"{_pct(s['mean_accuracy'])} / {_pct(s['pass@n_any_correct'])}"
                if s and s.get("num_problems")
                else "—"
            )
        a = m.get("average", {})
        cells.append(f"{_pct(a.get('mean_accuracy'))} / {_pct(a.get('pass@n_any_correct'))}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# The Ray shell: generate on the vLLM pool, then grade and report


def evaluate(cfg: Config, out_dir: str | Path, model: str | None = None) -> dict[str, Any]:
    """Run the paper's evaluation of `model` (default cfg.eval.model) on cfg.eval.benchmarks; returns metrics."""
    from palign_ray.engines.base import SamplingSpec
    from palign_ray.generation import generate_batches

    e = cfg.eval
    model = model or e.model
    t0 = time.monotonic()
    problems, quarantined = [], []
    for name in e.benchmarks:
        got, bad = load_benchmark(
            name, e.data_dir, e.num_problems, e.builtin_seed, builtin_split=e.builtin_split
        )
        problems += got
        quarantined += bad
    sampling = SamplingSpec(
        max_tokens=e.max_tokens,
        temperature=e.temperature,
        top_p=e.top_p,
        repetition_penalty=e.repetition_penalty,
        n=e.num_samples,
    )
    items = [
        {R.PROBLEM_ID: p[R.PROBLEM_ID], R.PROMPT: build_prompt(p[R.QUESTION])} for p in problems
    ]
    engine, ray_cfg = stage_engine(cfg, "eval")
    t_gen = time.monotonic()
    gen_rows = [
        r
        for batch in generate_batches(
            items,
            model=model,
            engine=engine,
            ray_cfg=ray_cfg,
            sampling=sampling,
            seed=cfg.run.seed,
            salt=STAGE,
        )
        for r in batch
    ]
    gen_wall = time.monotonic() - t_gen
    samples, bad = grade_samples(problems, gen_rows, e)
    quarantined += bad
    metrics = compute_metrics(samples, e, cfg.run.seed, failed=bad)  # failed: counted incorrect
    gen_tokens = sum(sum(r.get(R.NUM_GENERATED_TOKENS) or []) for r in gen_rows)
    metrics.update(
        model=model,
        config={"eval": to_dict(e), "engine": to_dict(engine), "seed": cfg.run.seed},
        timing={
            "wall_s": time.monotonic() - t0,
            "generation_wall_s": gen_wall,
            "generated_tokens": gen_tokens,
            "tokens_per_s": gen_tokens / gen_wall if gen_wall > 0 else 0.0,
        },
        quarantine=_reason_counts(quarantined),
    )
    write_report(Path(out_dir), metrics, samples, quarantined)
    log.info(
        "eval of %s: %d problems, %d samples, %d quarantined → %s",
        model,
        len(problems),
        len(samples),
        len(quarantined),
        out_dir,
    )
    return metrics


def _reason_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Quarantine rows per reason code, in first-seen order."""
    return dict(Counter(r[R.REASON] for r in rows))


# ---------------------------------------------------------------------------------------------
# Grading a file of existing generations


def generations_from_file(
    path: str,
    question_field: str,
    answer_field: str,
    output_field: str,
    id_field: str = "",
    label_field: str = "label",
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """A file of generations → (problems, generation rows, quarantine); one benchmark named after the file."""
    rows, bad = read_rows(path, "grade")
    bench = Path(path).stem
    problems, gens = [], []
    seen: set[str] = set()
    for n, row in enumerate(rows):
        ident = read_id(row, id_field, n)
        pid = f"{bench}/{ident.value}"
        where = f"{path}:{row.get('_source_line', n + 1)}"
        outputs, why = _samples(row.get(output_field), output_field)
        # the problems stage's gold reading: ["5"] is 5, a dict or NaN is quarantined, never stringified
        g = gold_answer(row.get(answer_field), answer_field, prose_is_solution=False)
        question = row.get(
            question_field
        )  # kept for reference only: optional, but never stringified
        q = read_text(question, question_field, "question") if not missing(question) else None
        for check in (ident, q):
            if why is None and check is not None and check.reason:
                why = (check.reason, check.detail)
        if why is None and g.answer is None:
            why = (g.reason, g.detail)
        if why is None and pid in seen:
            why = (DUPLICATE, "a row with this id came earlier in the file")
        if why is not None:
            bad.append(quarantine_row("grade", pid, why[0], f"{where}: {why[1]}"))
            continue
        seen.add(pid)
        refs = row.get(label_field)
        problems.append(
            {
                R.PROBLEM_ID: pid,
                R.QUESTION: q.value if q is not None else "",
                R.ANSWER: g.answer,
                BENCHMARK: bench,
            }
        )
        gens.append(
            {
                R.PROBLEM_ID: pid,
                R.GENERATIONS: outputs,
                REFERENCE_LABEL: refs
                if isinstance(refs, list) and len(refs) == len(outputs)
                else None,
            }
        )
    return problems, gens, bad


def _samples(value: Any, field: str) -> tuple[list[str], tuple[str, str] | None]:
    """A generations field: one text, a list of texts, or a list serialised as text (a CSV round-trip)."""
    if isinstance(value, str) and looks_serialised_list(value):
        decoded = decode_list(value)
        if decoded is None:
            return [], ("output_is_serialised_list", f"field {field!r} does not parse as a list")
        value = decoded
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items:
        return [], ("missing_output", f"field {field!r} holds no sample")
    texts: list[str] = []
    for i, item in enumerate(items):
        text = read_text(item, field, "output")
        if text.reason and not isinstance(item, str):  # a blank sample is a sample, graded wrong
            return [], (text.reason, f"{text.detail} (sample {i})")
        texts.append(item)
    return texts, None


def grade_file(
    path: str,
    cfg: EvalConfig,
    question_field: str = "prompt_ori",
    answer_field: str = "answer",
    output_field: str = "output",
    id_field: str = "",
    seed: int = 0,
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """Grade a file of generations without generating → (metrics, per-sample labels, quarantine)."""
    problems, gens, bad = generations_from_file(
        path, question_field, answer_field, output_field, id_field
    )
    samples, more_bad = grade_samples(problems, gens, cfg)
    metrics = compute_metrics(samples, cfg, seed)
    metrics.update(input=str(path), quarantine=_reason_counts(bad + more_bad))
    return metrics, samples, bad + more_bad
