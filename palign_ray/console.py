"""Where log lines go: a short console for `palign run`, the full logs under `<run_dir>/logs/`.

Quiet (the default of `palign run`): the console shows the stage progress bars, one summary line per
stage, this package's warnings and any error; `logs/run.log` holds the driver's own log and
`logs/<stage>.log` everything logged while that stage ran (Ray, Ray Data, Ray Train, vLLM, DeepSpeed,
transformers, Python warnings) followed by the new output of Ray's worker logs (the engines and the
training ranks live in Ray workers, whose output stays in Ray's session logs when it is not streamed
to the driver). `--verbose` streams everything to the console as before and still writes the files.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

PACKAGE = "palign_ray"
CONSOLE = {"console": True}  # `extra=` of an INFO record the quiet console shows (stage summaries)
# Library loggers that attach their own stderr handlers (and often propagate=False); quiet mode takes
# those handlers off so that their records reach the log files instead of the terminal.
LIBRARIES = (
    "ray",
    "vllm",
    "deepspeed",
    "DeepSpeed",
    "transformers",
    "torch",
    "accelerate",
    "datasets",
    "filelock",
    "urllib3",
    "py.warnings",
)
# pipeline._run_stage's records: they switch `<stage>.log` on and off (the format strings, not the text).
STAGE_START = "stage %s: start"
STAGE_END = "stage %s: finished in %.1f s"
STAGE_SKIPPED = "stage %s: done (manifest present), skipping"
# streaming._one_pass's per-part record: the quiet console's progress when stderr is no terminal (no bar).
PART_LINE = "stage %s: part %s: %d out, %d quarantined"
WORKER_LOG_GLOBS = ("worker-*.out", "worker-*.err")
_MARKERS = (
    ":job_id:",
    ":actor_name:",
    ":task_name:",
)  # Ray's log-monitor bookkeeping lines, not output
_HANDLER_NAME = "palign-console"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_state: dict[str, Any] = {"quiet": False}


def setup_console() -> None:
    """The CLI's console: what `logging.basicConfig` gave before (INFO to stderr), under a name we can find."""
    root = logging.getLogger()
    if root.handlers:  # someone (pytest, an embedding program) configured logging already
        return
    handler = logging.StreamHandler()
    handler.name = _HANDLER_NAME
    handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def is_quiet() -> bool:
    """True while `run_console(verbose=False)` is active: Ray should not stream worker output to the driver."""
    return bool(_state["quiet"])


@contextlib.contextmanager
def run_console(run_dir: Path, *, verbose: bool) -> Iterator[Path]:
    """Log files in `<run_dir>/logs/` for the block; quiet console unless `verbose`. Yields the logs dir."""
    logs = Path(run_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    root, pkg = logging.getLogger(), logging.getLogger(PACKAGE)
    old = (root.level, pkg.level, _state["quiet"])
    tty = sys.stderr.isatty()
    stderr = None if verbose else StderrToLogs()
    files = RunLogs(logs, stderr)
    root.setLevel(min(root.level or logging.INFO, logging.INFO))
    root.addHandler(files)
    undo = _quiet(tty, stderr) if stderr is not None else None
    logging.getLogger(__name__).info(
        "logs: %s (run.log: the driver; <stage>.log: libraries and Ray workers)",
        logs,
        extra=CONSOLE,
    )
    try:
        yield logs
    except BaseException:  # the traceback still reaches the terminal; the logs get it as well
        files.write_exception()
        raise
    finally:
        files.close()  # copies the worker logs of an unfinished (failed) stage first
        root.removeHandler(files)
        if undo is not None:
            undo()
        if stderr is not None:
            stderr.restore()
        root.setLevel(old[0])
        pkg.setLevel(old[1])
        _state["quiet"] = old[2]


def _quiet(tty: bool, stderr: StderrToLogs) -> Callable[[], None]:
    """Narrow the console to QuietConsole's lines (written to the terminal, not fd 2); returns the undo."""
    _state["quiet"] = True
    logging.getLogger(PACKAGE).setLevel(
        logging.DEBUG
    )  # the per-part lines are DEBUG: run.log keeps them
    logging.captureWarnings(
        True
    )  # DeprecationWarnings and DeepSpeed's accelerator warnings → the stage log
    adopt_library_loggers()
    console = _console_handler()
    if console is None:
        return lambda: logging.captureWarnings(False)
    quiet_filter, formatter, stream = (
        QuietConsole(tty),
        console.formatter,
        getattr(console, "stream", None),
    )
    console.addFilter(quiet_filter)
    console.setFormatter(QuietFormatter())
    if stream is stderr.saved_sys_stderr:  # it wrote to fd 2, which now points at the log files
        console.setStream(stderr.terminal)  # type: ignore[attr-defined]

    def undo() -> None:
        logging.captureWarnings(False)
        console.removeFilter(quiet_filter)
        console.setFormatter(formatter)
        if stream is stderr.saved_sys_stderr:
            console.setStream(stream)  # type: ignore[attr-defined]

    return undo


class StderrToLogs:
    """File descriptor 2 → the current log file; Python's `sys.stderr` → the terminal.

    Ray's C++ core worker writes its ERROR lines straight to fd 2 of the driver (e.g. one "constructor
    arguments in the object store and max_restarts > 0" line per actor pool, ray-project/ray#53727),
    where no logging handler sees them. Python code (our console, the tqdm bars, tracebacks) keeps the
    terminal through a duplicate of the original fd 2.
    """

    def __init__(self) -> None:
        sys.stderr.flush()
        self.saved_fd = os.dup(2)
        self.saved_sys_stderr = sys.stderr
        self.terminal = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
        sys.stderr = self.terminal

    def point_to(self, f: Any) -> None:
        f.flush()
        os.dup2(f.fileno(), 2)

    def restore(self) -> None:
        with contextlib.suppress(Exception):
            self.terminal.flush()
        os.dup2(self.saved_fd, 2)
        os.close(self.saved_fd)
        sys.stderr = self.saved_sys_stderr
        with contextlib.suppress(Exception):
            self.terminal.close()


def _console_handler() -> logging.Handler | None:
    return next((h for h in logging.getLogger().handlers if h.name == _HANDLER_NAME), None)


def adopt_library_loggers() -> None:
    """Take the terminal handlers off library loggers and let their records propagate to ours.

    Ray (at import), Ray Data (at `import ray.data`), transformers and vLLM attach stderr handlers
    with propagate=False; only handlers that write to a stream go, their own files stay.
    Called again when a stage starts and around `ray.init`, since libraries are imported late.
    """
    if not is_quiet():
        return
    names = [n for n in list(logging.Logger.manager.loggerDict) if n.split(".")[0] in LIBRARIES]
    for name in names:
        logger = logging.getLogger(name)
        for h in list(logger.handlers):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                logger.removeHandler(h)
        logger.propagate = True


def prepare_ray() -> None:
    """Before `ray.init` in quiet mode: Ray Data's own progress bars off (ours show per stage), loggers adopted."""
    if not is_quiet():
        return
    import ray.data

    # Ray Data draws one bar per operator on a terminal and, elsewhere, dumps its progress every 10 s.
    ray.data.DataContext.get_current().enable_progress_bars = False
    adopt_library_loggers()


def log_to_driver() -> bool:
    """`ray.init(log_to_driver=...)`: worker output streams to the console only when not quiet."""
    return not is_quiet()


# --------------------------------------------------------------------------------------------
# Handlers


class QuietConsole(logging.Filter):
    """The quiet console: summaries, this package's warnings, any error; per-part lines when there is no bar."""

    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR or getattr(record, "console", False):
            return True
        ours = record.name.split(".")[0] in (PACKAGE, "palign")
        if not ours:
            return False
        if record.levelno >= logging.WARNING or record.msg == STAGE_SKIPPED:
            return True
        return record.msg == PART_LINE and not self.tty


class QuietFormatter(logging.Formatter):
    """`HH:MM:SS message`, with the level only where it says something (WARNING, ERROR)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(message)s", datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        if record.levelno >= logging.WARNING:
            stamp, _, rest = line.partition(" ")
            line = f"{stamp} {record.levelname}: {rest}"
        return line


class RunLogs(logging.Handler):
    """`run.log` (this package, any error) and the current stage's `<stage>.log` (every record meanwhile).

    The stage file opens on pipeline's "stage X: start" record and closes on "stage X: finished";
    closing it appends what Ray's worker logs gained during the stage.
    """

    def __init__(self, logs: Path, stderr: StderrToLogs | None = None):
        super().__init__(logging.DEBUG)
        self.logs = logs
        self.stderr = stderr  # quiet mode: fd 2 follows the current file
        self.setFormatter(logging.Formatter(FORMAT))
        self.run_file = open(logs / "run.log", "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        if stderr is not None:
            stderr.point_to(self.run_file)
        self.stage: str | None = None
        self.stage_file: Any = None
        self.worker_offsets: dict[Path, int] = {}
        self.num_loggers = -1

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if (
                len(logging.Logger.manager.loggerDict) != self.num_loggers
            ):  # a library was imported meanwhile
                adopt_library_loggers()
                self.num_loggers = len(logging.Logger.manager.loggerDict)
            if record.name == "palign_ray.pipeline" and record.msg == STAGE_START and record.args:
                self._open_stage(str(record.args[0]))  # type: ignore[index]
            ours = record.name.split(".")[0] in (PACKAGE, "palign")
            if not ours and record.levelno < logging.INFO:  # Ray Data's logger runs at DEBUG
                return
            line = self.format(record) + "\n"
            # A library record outside any stage (none so far) still lands somewhere: run.log.
            if ours or record.levelno >= logging.ERROR or self.stage_file is None:
                self.run_file.write(line)
                self.run_file.flush()
            if self.stage_file is not None:
                self.stage_file.write(line)
                self.stage_file.flush()
            if record.name == "palign_ray.pipeline" and record.msg == STAGE_END:
                self._close_stage()
        except Exception:  # a log handler must never break the run
            self.handleError(record)

    def _open_stage(self, stage: str) -> None:
        self._close_stage()
        adopt_library_loggers()
        self.stage = stage
        self.stage_file = open(self.logs / f"{stage}.log", "a", encoding="utf-8")  # noqa: SIM115
        self.worker_offsets = {p: p.stat().st_size for p in worker_logs()}
        if self.stderr is not None:
            self.stderr.point_to(self.stage_file)

    def _close_stage(self) -> None:
        if self.stage_file is None:
            return
        copied = copy_new_output(self.worker_offsets, self.stage_file)
        if self.stderr is not None:
            self.stderr.point_to(self.run_file)
        self.stage_file.close()
        if copied:
            self.run_file.write(
                f"stage {self.stage}: {copied} Ray worker logs appended to {self.logs / (self.stage or '')}.log"
                f" (Ray session logs: {worker_log_dir()})\n"
            )
        self.stage, self.stage_file = None, None

    def write_exception(self) -> None:
        import traceback

        text = traceback.format_exc()
        for f in (self.run_file, self.stage_file):
            if f is not None:
                with contextlib.suppress(Exception):
                    f.write(text)
                    f.flush()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._close_stage()
            self.run_file.close()
        super().close()


def worker_log_dir() -> Path | None:
    """Ray's session log directory of this driver's node (None before Ray is up; Ray is never imported here)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    node = getattr(getattr(ray, "_private", None), "worker", None)
    node = getattr(node, "_global_node", None)
    return Path(node.get_logs_dir_path()) if node is not None else None


def worker_logs() -> list[Path]:
    d = worker_log_dir()
    return (
        sorted(p for g in WORKER_LOG_GLOBS for p in d.glob(g))
        if d is not None and d.is_dir()
        else []
    )


def copy_new_output(offsets: Mapping[Path, int], out: Any) -> int:
    """Append what each worker log gained since `offsets` (files new since then: all of it); returns files copied."""
    copied = 0
    for path in worker_logs():
        start = offsets.get(path, 0)
        with contextlib.suppress(OSError), open(path, "rb") as f:
            f.seek(start)
            lines = [
                x
                for x in f.read().decode("utf-8", "replace").splitlines()
                if x.strip() and not x.startswith(_MARKERS)
            ]
        if lines:
            out.write(f"==> Ray worker log {path.name} <==\n" + "\n".join(lines) + "\n")
            copied += 1
    return copied


# --------------------------------------------------------------------------------------------
# One summary line per stage, from its manifest (the driver's view of what happened in the actors).
# What differs between stages is on their rows (pipeline.STAGES: counts_rows, summary, engine_section).


def summary_lines(
    stage: str, manifest: Mapping[str, Any], cfg: Any = None
) -> list[tuple[int, str]]:
    """(level, line) for the console: counts and wall time, then warnings (engine restarts, degenerate judge...).

    `manifest` is the JSON dict (`Manifest.to_dict()`): the words read the stage's own fields too.
    """
    from palign_ray.pipeline import stage_row

    row, m = stage_row(stage), manifest
    num_actors = stage_actors(cfg, stage) if cfg is not None else 0
    width = 10  # the longest stage name, base_eval, and a space
    counts = _counts(m) if row.counts_rows else ""
    head = f"{stage:<{width}}" + " · ".join(
        x for x in (counts, _extra(m, row.summary), f"{m.get('wall_s', 0):.0f} s") if x
    )
    return (
        [(logging.INFO, head)]
        + judge_lines(stage, m)
        + [(logging.WARNING, f"{stage}: {w}") for w in _warnings(stage, m, num_actors)]
    )


def judge_lines(stage: str, m: Mapping[str, Any]) -> list[tuple[int, str]]:
    """The judge's audit line, and an error line when it is invalid by the validity rule (truncate's manifest)."""
    measured = m.get("judge_audit")
    if not measured:
        return []
    from palign_ray.judge.measure import audit_line

    out = [(logging.INFO, f"{stage}: judge {audit_line(measured)}")]
    verdict = measured.get("validity") or {}
    if verdict.get("status") == "invalid":
        out.append(
            (
                logging.ERROR,
                f"{stage}: judge INVALID: {'; '.join(verdict.get('reasons', []))} "
                "(README 'Is the judge valid?'; judge.on_invalid=fail stops before align)",
            )
        )
    elif verdict.get("status") == "unmeasured":
        out.append(
            (
                logging.WARNING,
                f"{stage}: judge unmeasured: no audit ({verdict.get('audit_note', '')}) "
                "and no known cuts",
            )
        )
    return out


def stage_actors(cfg: Any, stage: str) -> int:
    """Actors in the stage's engine pool (0 for a stage without engines): each pass starts that many engines."""
    from palign_ray.config import stage_engine
    from palign_ray.pipeline import stage_row

    section = stage_row(stage).engine_section
    return stage_engine(cfg, section)[1].num_actors if section is not None else 0


def _counts(m: Mapping[str, Any]) -> str:
    out = (
        f"{m.get('num_output', 0)} rows out"
        if "num_input" not in m
        else f"{m['num_input']} in → {m.get('num_output', 0)} out"
    )
    q = int(m.get("num_quarantined", 0) or m.get("summary", {}).get("num_quarantined", 0) or 0)
    reasons = m.get("reasons") or m.get("summary", {}).get("reasons") or {}
    if q:
        top = ", ".join(f"{r} {n}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:3])
        out += f", {q} quarantined" + (f" ({top})" if top else "")
    return out


def _extra(m: Mapping[str, Any], words: Callable[[Mapping[str, Any]], str] | None) -> str:
    """Engine starts where the stage ran pools, else the stage's own words (its row's `summary`)."""
    if "engine_starts" in m:
        return f"{m['engine_starts']} engine start{'s' * (m['engine_starts'] != 1)}" + (
            f", {m['passes']} passes" if m.get("passes", 1) > 1 else ""
        )
    return words(m) if words is not None else ""


def _warnings(stage: str, m: Mapping[str, Any], num_actors: int) -> list[str]:
    out: list[str] = []
    starts, passes = m.get("engine_starts"), max(1, int(m.get("passes", 1) or 1))
    if starts is not None and num_actors and starts > num_actors * passes:
        out.append(
            f"{starts} engine starts for {num_actors} actor(s) × {passes} pass(es): "
            f"{starts - num_actors * passes} engine restart(s) (an actor died; see logs/{stage}.log)"
        )
    degenerate = dict.fromkeys(
        d for s in m.get("summaries", []) or [] for d in (s or {}).get("degenerate", []) or []
    )
    if degenerate:
        out.append(
            f"degenerate judge: {'; '.join(degenerate)}; the cuts say little (see judge.calibration)"
        )
    restarts = (m.get("metrics") or {}).get("restarts")  # a training's (train's manifest)
    if restarts:
        out.append(f"training restarted {len(restarts)} time(s) from a checkpoint: {restarts}")
    return out
