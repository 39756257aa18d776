"""PNG plots of an evaluation: pass@k curves and generation lengths of correct vs incorrect samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers or in Ray workers
    import matplotlib.pyplot as plt

    return plt


def plot_pass_at_k(metrics: dict[str, Any], path: str | Path) -> None:
    """One line per benchmark (and the average): pass@k in percent against k."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    series = dict(metrics["benchmarks"])
    if len(series) > 1 and metrics.get("average", {}).get("pass@k"):
        series["average"] = metrics["average"]
    for name, m in series.items():
        pk = m.get("pass@k") or {}
        ks = sorted(pk, key=int)
        if ks:
            ax.plot(
                [int(k) for k in ks],
                [100 * pk[k] for k in ks],
                marker="o",
                label=name,
                linestyle="--" if name == "average" else "-",
            )
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k (%)")
    ax.set_title(f"pass@k: {metrics.get('model', '')}"[:80])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_length_histogram(samples: list[dict[str, Any]], path: str | Path) -> None:
    """Histogram of generation lengths (tokens where known, else characters), correct vs incorrect."""
    plt = _pyplot()
    use_tokens = bool(samples) and all(s.get("num_generated_tokens") is not None for s in samples)
    key, unit = ("num_generated_tokens", "tokens") if use_tokens else ("num_chars", "characters")
    correct = [s[key] for s in samples if s["correct"]]
    wrong = [s[key] for s in samples if not s["correct"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    top = max(correct + wrong, default=1)
    bins = [top * i / 30 for i in range(31)] if top > 0 else 10
    ax.hist(
        [wrong, correct],
        bins=bins,
        label=[f"incorrect ({len(wrong)})", f"correct ({len(correct)})"],
        color=["tab:red", "tab:green"],
        alpha=0.7,
        stacked=False,
    )
    ax.set_xlabel(f"generation length ({unit})")
    ax.set_ylabel("samples")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
