"""Evaluation reports: metrics.json, report.md, samples.jsonl, plots, and one table across runs."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from palign_ray.artifacts import write_json, write_jsonl


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
    full_samples: Iterable[dict[str, Any]] | None = None,
) -> None:
    """metrics.json, report.md, samples.jsonl, quarantine.jsonl and the PNG plots in `out_dir`.

    `samples` feed the plots (their generation text is not needed); samples.jsonl gets `full_samples`
    (default `samples`), consumed as a stream so that an evaluation's text never sits in memory at once.
    """
    from palign_ray.report_plots import plot_length_histogram, plot_pass_at_k

    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / "samples.jsonl", samples if full_samples is None else full_samples)
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
    stream = metrics.get("stream")
    if stream:
        resumed = (
            f"; resumed: {stream['num_done_before']} problems were committed by an earlier run"
            if stream["num_done_before"]
            else ""
        )
        md += [
            f"Streamed in {stream['num_parts']} parts, {stream['engine_starts']} engine starts on "
            f"{stream['actors_used']} actors{resumed}.",
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
