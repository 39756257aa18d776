"""Host memory of this process: current and peak RSS, with the peak reset so one phase can be measured.

RSS counts file-backed pages too: a checkpoint read through mmap shows up in every rank's RSS although
the page cache holds it once per node and can drop it. The anonymous part (RssAnon: tensors, optimizer
state, buckets) is what a rank really costs; the kernel keeps no peak of it, so a thread samples it.
"""

from __future__ import annotations

import contextlib
import resource
import threading
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


def anon_bytes() -> int:
    """Anonymous resident memory now (RssAnon; 0 where /proc is missing)."""
    return (_status_kib("RssAnon") or 0) * 1024


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
def peak_rss_during(sample_s: float = 0.005) -> Iterator[dict[str, int]]:
    """Measure one phase: yields a dict that gets (bytes) at exit

    `rss_before`, `peak`, `peak_increase`: RSS, peak from the kernel (VmHWM);
    `anon_before`, `anon_peak`, `anon_peak_increase`: anonymous memory, peak sampled every `sample_s`
    (a spike shorter than that can be missed, so this peak is a lower bound).

    Where the peak cannot be reset (not Linux), `peak` is the process's lifetime peak, an upper bound.
    """
    out: dict[str, int] = {}
    reset_peak_rss()
    before, anon_before = rss_bytes(), anon_bytes()
    anon_peak = [anon_before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(sample_s):
            anon_peak[0] = max(anon_peak[0], anon_bytes())

    sampler = threading.Thread(target=sample, name="anon-rss-sampler", daemon=True)
    sampler.start()
    try:
        yield out
    finally:
        stop.set()
        sampler.join()
        peak = peak_rss_bytes()
        top = max(anon_peak[0], anon_bytes())
        out.update(
            rss_before=before,
            peak=peak,
            peak_increase=max(0, peak - before),
            anon_before=anon_before,
            anon_peak=top,
            anon_peak_increase=max(0, top - anon_before),
        )
