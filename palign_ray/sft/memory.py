"""Host memory of this process: current and peak RSS, with the peak reset so one phase can be measured."""

from __future__ import annotations

import contextlib
import resource
from collections.abc import Iterator
from pathlib import Path

MIB = 1024 * 1024


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_bytes() -> int:
    """Resident set size now (anonymous + file-backed pages, as `ps` shows it)."""
    kib = _status_kib("VmRSS")
    return kib * 1024 if kib is not None else peak_rss_bytes()


def peak_rss_bytes() -> int:
    """Highest RSS since the process started or since the last `reset_peak_rss()` (VmHWM)."""
    kib = _status_kib("VmHWM")
    return (
        kib * 1024 if kib is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )


def reset_peak_rss() -> bool:
    """Set the peak back to the current RSS (Linux >= 4.0: write 5 to clear_refs); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@contextlib.contextmanager
def peak_rss_during() -> Iterator[dict[str, int]]:
    """Measure one phase: yields a dict that gets `rss_before`, `peak`, `peak_increase` (bytes) at exit.

    Where the peak cannot be reset (not Linux), `peak` is the process's lifetime peak, an upper bound.
    """
    out: dict[str, int] = {}
    reset_peak_rss()
    before = rss_bytes()
    try:
        yield out
    finally:
        peak = peak_rss_bytes()
        out.update(rss_before=before, peak=peak, peak_increase=max(0, peak - before))
