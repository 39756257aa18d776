"""Training curves as TensorBoard event files (offline; view with `tensorboard --logdir runs/`)."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# per-step record key → TensorBoard tag
SCALARS = {
    "loss": "train/loss",
    "lr": "train/lr",
    "grad_norm": "train/grad_norm",
    "tokens_per_s": "train/tokens_per_s",
    "step_time_s": "train/step_time_s",
}


class TrainCurves:
    """Writes one point per optimizer step; a disabled instance (logdir None) does nothing.

    first_step: the first step this process logs. A resumed run rewrites the steps after its checkpoint,
    so points from first_step on that an earlier, killed attempt wrote are purged (TensorBoard hides
    them on reading a SessionLog START at that step, which is what SummaryWriter(purge_step=) writes).
    Synchronous, flushed every step: tensorboardX's SummaryWriter queues events for a background
    thread, and a worker that Ray kills loses what is still queued.
    """

    def __init__(self, logdir: str | Path | None, first_step: int = 1):
        self.writer: Any = None
        if logdir is None:
            return
        import os

        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog

        Path(logdir).mkdir(parents=True, exist_ok=True)
        # pid + ns: never the name of an earlier attempt's file (EventsWriter truncates an existing one).
        self.writer = EventsWriter(
            str(Path(logdir) / "events"), filename_suffix=f".{os.getpid()}.{time.time_ns()}"
        )
        if first_step > 1:
            self.writer.write_event(
                Event(
                    wall_time=time.time(),
                    step=first_step,
                    session_log=SessionLog(status=SessionLog.START),
                )
            )
        self.writer.flush()
        log.info("training curves: %s (tensorboard --logdir %s)", logdir, logdir)

    def log(self, rec: dict[str, Any]) -> None:
        if self.writer is None:
            return
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.proto.summary_pb2 import Summary

        values = [
            Summary.Value(tag=tag, simple_value=float(rec[key]))
            for key, tag in SCALARS.items()
            if isinstance(rec.get(key), (int, float)) and math.isfinite(rec[key])
        ]
        self.writer.write_event(
            Event(wall_time=time.time(), step=rec["step"], summary=Summary(value=values))
        )
        self.writer.flush()  # a step takes seconds or more; a killed worker keeps every point it logged

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
