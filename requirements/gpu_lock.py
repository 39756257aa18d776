"""Regenerate requirements/gpu.lock from requirements/gpu.txt with pip's resolver (no GPU needed).

Run as (from the repo root, on any Linux x86_64 box with Python 3.11 and PyPI access):
    python3.11 requirements/gpu_lock.py            # resolves into a throwaway venv under /tmp, writes the lock
    python3.11 requirements/gpu_lock.py --report R.json   # only convert an existing `pip --report` file

`pip install --dry-run --report` resolves the CUDA wheels PyPI serves for linux/x86_64/cp311 without
installing or needing a GPU; pip's local configuration (find-links, constraints) is switched off so that
a CPU wheel on this machine's disk cannot stand in for the CUDA one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
# vLLM declares torchaudio/torchcodec unpinned; the releases pip picks are built for other torch versions
# (torchaudio 2.11 next to torch 2.13) and nothing here uses audio or video: leave them out (as cpu.lock does).
EXCLUDED = ("torchaudio", "torchcodec")
HEADER = ("# Frozen CUDA environment (pip install --no-deps -r), resolved from requirements/gpu.txt by pip for "
          "linux x86_64, CPython 3.11.\n# Regenerate: python3.11 requirements/gpu_lock.py (README \"Install details\").")


def lock_lines(report: dict) -> list[str]:
    """`name==version --hash=sha256:...` per resolved distribution, sorted by name, EXCLUDED left out."""
    lines = []
    for item in report["install"]:
        meta = item["metadata"]
        name = meta["name"]
        if name.lower() in EXCLUDED:
            continue
        hashes = item.get("download_info", {}).get("archive_info", {}).get("hashes", {})
        pin = f"{name}=={meta['version']}"
        lines.append(f"{pin} --hash=sha256:{hashes['sha256']}" if "sha256" in hashes else pin)
    return sorted(lines, key=str.lower)


def resolve(requirements: Path, report: Path) -> None:
    venv = Path(tempfile.mkdtemp(prefix="palign-gpu-lock-")) / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")} | {"PIP_CONFIG_FILE": os.devnull}
    pip = [str(venv / "bin" / "python"), "-m", "pip"]
    subprocess.run(pip + ["install", "-q", "pip==25.3"], check=True, env=env)
    subprocess.run(pip + ["install", "--dry-run", "--ignore-installed", "--report", str(report), "-r", str(requirements)],
                   check=True, env=env)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requirements", default=str(HERE / "gpu.txt"))
    ap.add_argument("--report", default="", help="an existing pip --report JSON (skip the resolution)")
    ap.add_argument("--out", default=str(HERE / "gpu.lock"))
    args = ap.parse_args()
    report = Path(args.report) if args.report else Path(tempfile.mkdtemp(prefix="palign-gpu-lock-")) / "report.json"
    if not args.report:
        resolve(Path(args.requirements), report)
    lines = lock_lines(json.loads(report.read_text()))
    Path(args.out).write_text(HEADER + "\n" + "\n".join(lines) + "\n")
    sys.stderr.write(f"wrote {len(lines)} pins to {args.out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
