"""Subprocess helpers of the fault tests: run a `palign` command, or SIGKILL it (and its local Ray) mid-way."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def env() -> dict[str, str]:
    return {
        **os.environ,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(REPO),
    }


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
    except ProcessLookupError:
        pass
    proc.wait(30)


def kill_when(
    cmd: list[str],
    cwd: Path,
    log: Path,
    ready: Callable[[], bool],
    what: str,
    timeout_s: float = 600,
) -> None:
    """Start `palign run`, SIGKILL the driver (and its local Ray) as soon as `ready()` holds."""
    proc = subprocess.Popen(
        cmd,
        env=env(),
        cwd=cwd,
        start_new_session=True,
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and proc.poll() is None and not ready():
            time.sleep(0.1)
        assert proc.poll() is None, (
            f"the run ended before it could be killed {what}:\n" + log.read_text()[-3000:]
        )
        assert ready(), f"timed out waiting to kill {what}"
        proc.send_signal(signal.SIGKILL)
    finally:
        kill_group(proc)


def finish(cmd: list[str], cwd: Path, log: Path) -> None:
    done = subprocess.run(
        cmd, env=env(), cwd=cwd, timeout=900, stdout=open(log, "w"), stderr=subprocess.STDOUT
    )
    assert done.returncode == 0, log.read_text()[-3000:]
