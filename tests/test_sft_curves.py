"""TensorBoard training curves: one point per step and tag, flushed as written, a resumed run's overlap purged."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from palign_ray.sft.curves import TrainCurves


def curves(logdir: Path) -> dict[str, dict[int, float]]:
    """The scalars TensorBoard would show: event files in write order, a resumed writer's purge applied."""
    import struct

    from tensorboardX.proto.event_pb2 import Event, SessionLog

    out: dict[str, dict[int, float]] = {}
    for f in sorted(logdir.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime_ns):
        data, pos = f.read_bytes(), 0
        while pos < len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc
            (n,) = struct.unpack("<Q", data[pos : pos + 8])
            ev = Event.FromString(data[pos + 12 : pos + 12 + n])
            pos += 16 + n
            if ev.HasField("session_log") and ev.session_log.status == SessionLog.START:
                for (
                    points
                ) in out.values():  # purge_step: hide what a killed attempt wrote from here on
                    for step in [s for s in points if s >= ev.step]:
                        del points[step]
            for v in ev.summary.value:
                out.setdefault(v.tag, {})[ev.step] = v.simple_value
    return out


def _rec(step: int, loss: float) -> dict:
    return {
        "step": step,
        "loss": loss,
        "lr": 1e-4 * step,
        "grad_norm": math.nan,
        "tokens_per_s": 100.0 + step,
    }


def test_points_are_on_disk_at_once_and_a_resume_replaces_the_overlap(tmp_path):
    first = TrainCurves(tmp_path, first_step=1)
    for step in (1, 2, 3):
        first.log(_rec(step, 3.0 - step * 0.1))
    # Not closed: a killed worker never closes its writer; what it logged is already on disk.
    assert curves(tmp_path)["train/loss"] == pytest.approx({1: 2.9, 2: 2.8, 3: 2.7})
    resumed = TrainCurves(tmp_path, first_step=3)  # the checkpoint was at step 2
    for step in (3, 4):
        resumed.log(_rec(step, 1.0 + step))
    resumed.close()
    got = curves(tmp_path)
    assert got["train/loss"] == pytest.approx({1: 2.9, 2: 2.8, 3: 4.0, 4: 5.0})
    assert "train/grad_norm" not in got  # NaN (no norm yet) is left out, not plotted as a spike
    assert got["train/tokens_per_s"][4] == 104.0


def test_a_disabled_writer_writes_nothing(tmp_path):
    off = TrainCurves(None)
    off.log(_rec(1, 1.0))
    off.close()
    assert not list(tmp_path.iterdir())
