"""Run report: `<run_dir>/report.md` + PNG plots from the stage manifests and outputs.

Stages are found where a plain run places them (`pipeline.stage_dirs`) and read through their rows
(`pipeline.STAGES`: output path, token counts, report cells), never by a literal path or a name test.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from palign_ray.artifacts import Manifest, StageDir, read_manifest
from palign_ray.pipeline import STAGE_NAMES, STAGES, stage_dirs, stage_output, stage_row

log = logging.getLogger(__name__)


def summary_tokens(stage_dir: Path) -> dict[str, int] | None:
    """Token totals from a row stage's per-part summaries (in its commit markers)."""
    sums = [c.get("summary", {}) for c in StageDir(stage_dir).commits()]
    if not any("generated_tokens" in x for x in sums):
        return None
    return {
        "prefilled": sum(int(x.get("prompt_tokens", 0)) for x in sums),
        "cached": sum(int(x.get("cached_tokens", 0)) for x in sums),
        "generated": sum(int(x.get("generated_tokens", 0)) for x in sums),
    }


def _manifest(dirs: Mapping[str, Path], stage: str) -> Manifest | None:
    """The stage's manifest where it is placed, or None (not planned, or not finished)."""
    p = dirs[stage] / "manifest.json" if stage in dirs else None
    return read_manifest(p) if p is not None and p.is_file() else None


def _cells(stage: str, m: Manifest) -> tuple[Any, Any]:
    """(in, out): the stage's own cells where its row has them (a model, the models evaluated), else row counts."""
    cells = stage_row(stage).cells
    own = cells(m.to_dict()) if cells is not None else None
    return own or ("–" if m.num_input is None else m.num_input, m.num_output)


def counts_table(dirs: Mapping[str, Path], stages: list[str]) -> list[str]:
    lines = [
        "| stage | in | out | quarantined | reasons | engine starts | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in stages:
        m = _manifest(dirs, s)
        if m is None:
            lines.append(f"| {s} | – | – | – | not run | – | – |")
            continue
        n_in, out = _cells(s, m)
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(m.reasons.items())) or "–"
        starts = m.extra.get("engine_starts", "–")
        lines.append(
            f"| {s} | {n_in} | {out} | {m.num_quarantined} | {reasons} | {starts} | {m.wall_s or 0:.1f} |"
        )
    return lines


def token_table(dirs: Mapping[str, Path], stages: list[str], num_sft: int) -> list[str]:
    lines = [
        "| stage | prefilled | cached | computed (prefilled − cached) | generated |",
        "|---|---|---|---|---|",
    ]
    total = {"prefilled": 0, "cached": 0, "generated": 0}
    for s in stages:
        if not stage_row(s).tokens or not dirs[s].is_dir():
            continue
        t = summary_tokens(dirs[s]) or {"prefilled": 0, "cached": 0, "generated": 0}
        for k in total:
            total[k] += t[k]
        lines.append(
            f"| {s} | {t['prefilled']} | {t['cached']} | {t['prefilled'] - t['cached']} | {t['generated']} |"
        )
    lines.append(
        f"| **total** | {total['prefilled']} | {total['cached']} | {total['prefilled'] - total['cached']} | {total['generated']} |"
    )
    if num_sft:
        cost = (total["prefilled"] - total["cached"] + total["generated"]) / num_sft
        lines += [
            "",
            f"**Cost per accepted SFT example**: {cost:,.0f} tokens computed "
            f"(prefill not served from cache + generated) over {num_sft} accepted examples.",
        ]
    return lines


def api_usage_table(run_dir: Path, teacher: Any) -> list[str]:
    """The teacher's API requests, retries, tokens and cost (backend=openai), from its part summaries."""
    from palign_ray.engines.openai_api import api_cost
    from palign_ray.streaming import merge_summaries

    teacher_dir = stage_output(stage_dirs(run_dir, ["teacher"]), "teacher")
    sums = [c.get("summary", {}) for c in StageDir(teacher_dir).commits()]
    m = merge_summaries([x for x in sums if "api_requests" in x])
    if not m:
        return []
    prompt, cached, gen = (
        int(m.get(k, 0)) for k in ("prompt_tokens", "cached_tokens", "generated_tokens")
    )
    prices = (
        teacher.price_prompt_per_mtok,
        teacher.price_cached_per_mtok,
        teacher.price_completion_per_mtok,
    )
    cost = api_cost(prompt, cached, gen, prices)
    retries = (
        ", ".join(f"{k}: {v}" for k, v in sorted((m.get("api_retries") or {}).items())) or "none"
    )
    return [
        f"## Teacher API usage (`{teacher.model}` at {teacher.base_url})",
        "",
        "| requests | retried (by cause) | failed | prompt tokens | cached | completion tokens | cost |",
        "|---|---|---|---|---|---|---|",
        f"| {m['api_requests']} | {retries} | {m.get('api_failed_requests', 0)} | {prompt} | {cached} | "
        f"{gen} | {'–' if cost is None else f'${cost:,.2f}'} |",
        "",
        "Usage as the server reported it, summed over committed parts (requests of a part lost to a "
        "crash and redone on resume were billed but are not counted); cost at teacher.price_*_per_mtok"
        + ("." if cost is not None else " (unset: no cost shown)."),
        "",
    ]


def truncation_stats(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["(no truncation rows)"]
    ratios = [
        r["prefix_ratio_sentences"] for r in rows if r.get("prefix_ratio_sentences") is not None
    ]
    chars = [r["prefix_ratio_chars"] for r in rows if r.get("prefix_ratio_chars") is not None]
    probes = [r.get("num_probes", 0) for r in rows]
    rounds = [r.get("num_rounds", 0) for r in rows]
    suff = sum(1 for r in rows if r.get("is_sufficient"))
    nonmono = sum(1 for r in rows if r.get("non_monotone"))

    def q(v: list[float]) -> str:
        return (
            f"median {statistics.median(v):.3f}, mean {statistics.fmean(v):.3f}, min {min(v):.3f}, max {max(v):.3f}"
            if v
            else "–"
        )

    return [
        f"- problems: {len(rows)}; judged sufficient before the full trace: {suff}; non-monotone verdicts: {nonmono}",
        f"- prefix ratio (sentences): {q(ratios)}",
        f"- prefix ratio (characters): {q(chars)}",
        f"- probes per problem: {q([float(p) for p in probes])}; rounds: {q([float(r) for r in rounds])}",
    ]


def _plot_hist(path: Path, series: dict[str, list[float]], title: str, xlabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, values in series.items():
        if values:
            ax.hist(
                values, bins=20, range=(0, 1) if "ratio" in xlabel else None, alpha=0.6, label=label
            )
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("problems")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_loss(path: Path, steps: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([s.get("step", i) for i, s in enumerate(steps)], [s["loss"] for s in steps], marker=".")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title("SFT loss")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _train_steps(metrics: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not metrics:
        return []
    steps = metrics.get("steps") or metrics.get("history") or []
    return [s for s in steps if isinstance(s, dict) and "loss" in s]


TRUNCATION_COLUMNS = (
    "prefix_ratio_sentences",
    "prefix_ratio_chars",
    "num_probes",
    "num_rounds",
    "is_sufficient",
    "non_monotone",
)


def _columns(sd: StageDir, columns: tuple[str, ...]) -> list[dict[str, Any]]:
    """Only these columns of a stage's committed output (never its traces: the driver stays small)."""
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    for f in sd.output_files():
        names = set(pq.read_schema(f).names)
        rows += pq.read_table(f, columns=[c for c in columns if c in names]).to_pylist()
    return rows


def write_run_report(run_dir: Path, cfg: Any, stages: list[str]) -> Path:
    """Write report.md (+ PNGs) from whatever stages have finished."""
    from palign_ray.judge.measure import status_label

    run_dir = Path(run_dir)
    dirs = stage_dirs(run_dir, STAGE_NAMES)
    truncate_m = _manifest(dirs, "truncate") if "truncate" in stages else None
    judge_m = truncate_m.extra.get("judge_audit") if truncate_m is not None else None
    judge_status = status_label(judge_m)
    lines = [
        f"# P-ALIGN run report: `{run_dir}`",
        "",
        f"method: **{cfg.run.method}**"
        + (f" (**{judge_status}**, see 'Is the judge valid?')" if judge_status else "")
        + f", seed {cfg.run.seed}",
        "",
        *(
            [
                "> Smoke run (embedded SmolLM2-135M student, a few training steps): its numbers say nothing about the method; `make compare` measures P-ALIGN against its baselines with CIs and paired differences.",
                "",
            ]
            if cfg.sft.model == "default"
            else []
        ),
        "## Rows per stage",
        "",
        *counts_table(dirs, stages),
        "",
        f"(align's out/quarantined count continuation samples: {cfg.align.num_samples} per problem; "
        "train's out is the exported model; eval lists the models evaluated.)",
        "",
    ]
    trunc = (
        _columns(StageDir(stage_output(dirs, "truncate")), TRUNCATION_COLUMNS)
        if "truncate" in stages
        else []
    )
    if trunc:
        lines += [
            "## Truncation (sufficiency search)",
            "",
            *truncation_stats(trunc),
            "",
            "![prefix ratios](prefix_ratio.png)",
            "![probes](probes.png)",
            "",
        ]
        _plot_hist(
            run_dir / "prefix_ratio.png",
            {
                "sentences": [r["prefix_ratio_sentences"] for r in trunc],
                "characters": [r["prefix_ratio_chars"] for r in trunc],
            },
            "kept prefix / full trace",
            "prefix ratio",
        )
        _plot_hist(
            run_dir / "probes.png",
            {
                "probes": [float(r.get("num_probes", 0)) for r in trunc],
                "rounds": [float(r.get("num_rounds", 0)) for r in trunc],
            },
            "judge work per problem",
            "count",
        )
    if judge_m:
        from palign_ray.judge.measure import audit_markdown

        lines += ["## Is the judge valid? (audit of the cuts)", "", *audit_markdown(judge_m)]
    sft_m = _manifest(dirs, "sft_data")
    num_sft = sft_m.num_output if sft_m is not None else 0
    lines += ["## Tokens per stage", "", *token_table(dirs, stages, num_sft), ""]
    if "teacher" in stages and cfg.teacher.backend == "openai":
        lines += api_usage_table(run_dir, cfg.teacher)
    train_m = _manifest(dirs, "train")
    steps = _train_steps(train_m.extra.get("metrics") if train_m is not None else None)
    if steps and train_m:
        _plot_loss(run_dir / "loss.png", steps)
        m = train_m.extra["metrics"]
        lines += [
            "## Training",
            "",
            f"- steps: {len(steps)}; first loss {steps[0]['loss']:.4f}, last loss {steps[-1]['loss']:.4f}",
            *[
                f"- {k}: {m[k]}"
                for k in (
                    "num_steps",
                    "final_loss",
                    "mean_tokens_per_s",
                    "mean_step_time_s",
                    "padding_share_packed",
                    "padding_share_unpacked",
                    "restarts",
                    "wall_time_s",
                )
                if k in m
            ],
            "",
            "![loss](loss.png)",
            "",
        ]
    lines += _eval_section(dirs)
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    log.info("wrote %s", path)
    return path


def _eval_section(dirs: Mapping[str, Path]) -> list[str]:
    """Every evaluation stage's metrics side by side (base, then trained: the rows' order)."""
    files = [
        p
        for row in STAGES
        if row.evaluation and (p := stage_output(dirs, row.name) / "metrics.json").is_file()
    ]
    if not files:
        return []
    from palign_ray.eval.report import compare_table

    return [
        "## Evaluation (pass@k): base vs trained student",
        "",
        compare_table([str(p) for p in files]),
        "",
    ]
