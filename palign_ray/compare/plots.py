"""The PNGs of a `palign compare` run: scores with CIs per benchmark, and length against accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _bar_values(cells: list[dict[str, Any] | None]) -> tuple[list[float], list[list[float]]]:
    """Bar heights and (below, above) whisker lengths in percent; a missing cell is a gap."""
    vals, below, above = [], [], []
    for c in cells:
        v = 100 * c["value"] if c and c.get("num_problems") else float("nan")
        lo, hi = (100 * x for x in c["ci95"]) if c and c.get("num_problems") else (v, v)
        vals.append(v)
        below.append(max(0.0, v - lo) if v == v else 0.0)
        above.append(max(0.0, hi - v) if v == v else 0.0)
    return vals, [below, above]


def write_plots(res: dict[str, Any], out: Path) -> None:
    from palign_ray.report_plots import _pyplot

    if not res["scores"]:
        return
    plt = _pyplot()
    cols = [*res["benchmarks"], "average"]
    labels = list(res["scores"])
    fig, axes = plt.subplots(1, len(res["ks"]), figsize=(5 * len(res["ks"]) + 1, 4), squeeze=False)
    width = 0.8 / max(1, len(labels))
    for ax, k in zip(axes[0], res["ks"], strict=True):
        for i, label in enumerate(labels):
            vals, err = _bar_values([res["scores"][label][f"pass@{k}"].get(c) for c in cols])
            ax.bar(
                [j + i * width for j in range(len(cols))],
                vals,
                width,
                yerr=err,
                capsize=3,
                label=label,
            )
        ax.set_xticks(
            [j + width * (len(labels) - 1) / 2 for j in range(len(cols))], cols, fontsize=8
        )
        ax.set_ylabel(f"pass@{k} (%)")
        ax.set_title(f"pass@{k} with 95% bootstrap CI")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "scores.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 4))
    for label in labels:
        x, cell = res["mean_response_tokens"].get(label), res["scores"][label]["pass@1"]["average"]
        if x is not None:
            lo, hi = cell["ci95"]
            ax.errorbar(
                [x],
                [100 * cell["value"]],
                yerr=[[100 * (cell["value"] - lo)], [100 * (hi - cell["value"])]],
                fmt="o",
                capsize=3,
                label=label,
            )
    ax.set_xlabel("mean response length (tokens)")
    ax.set_ylabel("average pass@1 (%)")
    ax.set_title("length vs accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "length_vs_accuracy.png", dpi=100)
    plt.close(fig)
