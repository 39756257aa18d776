"""Host-memory probes of a phase: RSS peaks from the kernel, anonymous-memory peaks sampled.

Each measurement runs in a fresh interpreter: in the test process, freed heap memory that is still
resident would be reused by the allocation and the peaks would not move.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

MIB = 1024 * 1024
REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc/self/status"
)


def _fresh(code: str, *args: str) -> dict:
    """Run `code` in a fresh interpreter; returns the JSON of its last output line."""
    out = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def _measure(body: str) -> dict[str, int]:
    """Run `body` (indented under `with peak_rss_during() as mem:`) in a fresh interpreter; returns mem."""
    return _fresh(
        "import json, mmap, sys, time\n"
        "from palign_ray.sft.memory import MIB, peak_rss_during\n"
        + body.strip("\n")
        + "\nprint(json.dumps(mem))\n"
    )


def test_a_freed_allocation_still_counts_in_both_peaks() -> None:
    mem = _measure(
        """
with peak_rss_during() as mem:
    block = b"\\1" * (64 * MIB)  # written: every page is resident
    time.sleep(0.2)  # the anonymous peak is sampled every 5 ms
    del block
"""
    )
    assert mem["peak_increase"] > 56 * MIB and mem["anon_peak_increase"] > 56 * MIB, mem


def test_file_pages_raise_rss_but_not_anonymous_memory(tmp_path: Path) -> None:
    """A checkpoint read through mmap is page cache (shared by the ranks of a node), not the rank's own memory."""
    f = tmp_path / "weights.bin"
    f.write_bytes(b"\1" * (64 * MIB))
    mem = _measure(
        f"""
fh = open({str(f)!r}, "rb")
m = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
with peak_rss_during() as mem:
    total = sum(m[i] for i in range(0, len(m), 4096))  # touch every page
assert total == 64 * MIB // 4096
"""
    )
    assert mem["peak_increase"] > 56 * MIB, mem
    assert mem["anon_peak_increase"] < 16 * MIB, mem


_CHURN = """
import json, sys
from palign_ray.sft.memory import MIB, anon_bytes, setup_allocator

def churn():
    # Freeing one mapped block raises glibc's dynamic mmap threshold to its size (unless pinned) ...
    warm_up = b"\\0" * (8 * MIB)
    del warm_up
    # ... then what zero.Init does per module: build full-size, keep a small part, free the rest.
    kept, freed = [], []
    for _ in range(128):
        freed.append(b"\\1" * (512 * 1024))
        kept.append(b"\\2" * (64 * 1024))  # heap-sized, larger than any hole left before
    before = anon_bytes()
    del freed
    return before - anon_bytes(), kept

if sys.argv[1] == "tuned":
    with setup_allocator() as tuned:
        returned, kept = churn()
else:
    tuned, (returned, kept) = None, churn()
print(json.dumps({"tuned": tuned, "returned": returned}))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunes glibc's malloc")
def test_setup_allocator_returns_freed_blocks_between_live_ones() -> None:
    """Without it, 64 MiB freed between small live blocks stays resident; with it, it goes back to the OS."""
    plain, tuned = _fresh(_CHURN, "plain"), _fresh(_CHURN, "tuned")
    assert plain["returned"] < 8 * MIB, plain  # the premise: the heap kept the holes
    assert tuned["tuned"] is True
    assert tuned["returned"] > 56 * MIB, tuned
