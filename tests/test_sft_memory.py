"""Host-memory probes of a phase: RSS peaks from the kernel, anonymous-memory peaks sampled."""

from __future__ import annotations

import mmap
import sys
import time
from pathlib import Path

import pytest

from palign_ray.sft.memory import MIB, peak_rss_during

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc/self/status"
)


def test_a_freed_allocation_still_counts_in_both_peaks() -> None:
    with peak_rss_during() as mem:
        block = b"\1" * (64 * MIB)  # written: every page is resident
        time.sleep(
            0.2
        )  # the anonymous peak is sampled (every 5 ms); a loaded box may delay the sampler
        del block
    assert mem["peak_increase"] > 56 * MIB and mem["anon_peak_increase"] > 56 * MIB, mem


def test_file_pages_raise_rss_but_not_anonymous_memory(tmp_path: Path) -> None:
    """A checkpoint read through mmap is page cache (shared by the ranks of a node), not the rank's own memory."""
    f = tmp_path / "weights.bin"
    f.write_bytes(b"\1" * (64 * MIB))
    with f.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as m:
        with peak_rss_during() as mem:
            total = sum(m[i] for i in range(0, len(m), 4096))  # touch every page
    assert total == 64 * MIB // 4096
    assert mem["peak_increase"] > 56 * MIB, mem
    assert mem["anon_peak_increase"] < 16 * MIB, mem
