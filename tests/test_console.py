"""The quiet console of `palign run`: what reaches the terminal, run.log and <stage>.log; the stage summary lines."""

import io
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from palign_ray import console as C

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def term(monkeypatch):
    """A console handler like the CLI's, writing into a buffer; library loggers restored afterwards."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.name = C._HANDLER_NAME
    handler.setFormatter(logging.Formatter(C.FORMAT))
    root = logging.getLogger()
    saved = {
        n: (list(lg.handlers), lg.propagate)
        for n, lg in logging.Logger.manager.loggerDict.items()
        if isinstance(lg, logging.Logger) and n.split(".")[0] in C.LIBRARIES
    }
    root.addHandler(handler)
    yield buf
    root.removeHandler(handler)
    for n, (handlers, propagate) in saved.items():
        lg = logging.getLogger(n)
        lg.handlers[:] = handlers
        lg.propagate = propagate


def _library_logger_with_own_terminal_handler(name: str) -> tuple[logging.Logger, io.StringIO]:
    """What Ray/Ray Data/transformers do: their own stderr handler and propagate=False."""
    own = io.StringIO()
    lg = logging.getLogger(name)
    lg.handlers[:] = [logging.StreamHandler(own)]
    lg.propagate = False
    lg.setLevel(logging.DEBUG)
    return lg, own


def _emit_a_stage(stage: str = "teacher") -> None:
    pipe, lib = logging.getLogger("palign_ray.pipeline"), logging.getLogger("ray.data.test_console")
    pipe.info(C.STAGE_START, stage)
    lib.debug("library debug line")
    lib.info("library info line")
    lib.warning("library deprecation warning")
    logging.getLogger("palign_ray.streaming").debug(C.PART_LINE, stage, "part-0", 3, 1)
    logging.getLogger("palign_ray.streaming").info("stage %s: 4 rows in", stage)
    logging.getLogger("palign_ray.streaming").warning("stage %s: pass 2 for 1 problems", stage)
    pipe.info("%s summary line", stage, extra=C.CONSOLE)
    os.write(2, b"core_worker.cc:2465: a C++ line written straight to fd 2\n")
    lib.error("library error line")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("a DeprecationWarning from somewhere", DeprecationWarning, stacklevel=1)
    pipe.info(C.STAGE_END, stage, 1.0)
    lib.info("library line between stages")


def test_quiet_console_shows_summaries_warnings_errors_and_files_get_the_rest(
    tmp_path, term, monkeypatch
):
    _, own = _library_logger_with_own_terminal_handler("ray.data.test_console")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    with C.run_console(tmp_path, verbose=False) as logs:
        assert C.is_quiet() and not C.log_to_driver()
        _emit_a_stage()
    assert not C.is_quiet() and C.log_to_driver()
    os.write(2, b"after the run: fd 2 is the terminal again\n")
    assert sys.stderr is not None and not any(
        "after the run" in p.read_text() for p in logs.iterdir()
    )
    shown = term.getvalue()
    assert own.getvalue() == ""  # the library's own terminal handler was taken off
    for line in (
        "summary line",
        "pass 2 for 1 problems",
        "library error line",
        "part part-0: 3 out, 1 quarantined",
        f"logs: {logs}",
    ):
        assert line in shown, shown
    for line in (
        "library info line",
        "library deprecation warning",
        "library debug line",
        "4 rows in",
        "DeprecationWarning",
        "stage teacher: start",
    ):
        assert line not in shown, shown
    assert len(shown.splitlines()) == 5, shown
    run_log, stage_log = (logs / "run.log").read_text(), (logs / "teacher.log").read_text()
    for line in (
        "stage teacher: start",
        "4 rows in",
        "summary line",
        "library error line",
        "part-0",
        "library line between stages",
    ):
        assert line in run_log, run_log
    assert "library info line" not in run_log and "library deprecation warning" not in run_log
    for line in (
        "stage teacher: start",
        "library info line",
        "library deprecation warning",
        "library error line",
        "DeprecationWarning",
        "summary line",
        "stage teacher: finished",
        "a C++ line written straight to fd 2",
    ):
        assert line in stage_log, stage_log
    assert "library debug line" not in stage_log and "between stages" not in stage_log


def test_quiet_console_on_a_terminal_leaves_progress_to_the_bar(tmp_path, term, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    with C.run_console(tmp_path, verbose=False):
        _emit_a_stage()
    assert "part-0" not in term.getvalue() and "summary line" in term.getvalue()


def test_verbose_streams_everything_as_before_and_still_writes_the_driver_log(tmp_path, term):
    _, own = _library_logger_with_own_terminal_handler("ray.data.test_console")
    with C.run_console(tmp_path, verbose=True) as logs:
        assert not C.is_quiet() and C.log_to_driver()
        _emit_a_stage()
    assert "library info line" in own.getvalue()  # Ray's own handler still prints, as before
    assert "4 rows in" in term.getvalue() and "stage teacher: start" in term.getvalue()
    assert (
        "4 rows in" in (logs / "teacher.log").read_text()
    )  # the driver's own lines still go to the files


def test_real_run_stage_switches_the_stage_log_and_logs_a_summary(tmp_path, term, monkeypatch):
    """pipeline._run_stage's own records drive the stage log; its summary line reaches the quiet console."""
    from palign_ray import pipeline as P
    from palign_ray.artifacts import StageDir
    from palign_ray.config import load_config

    def body(s):
        import ray  # noqa: F401  (its loggers appear mid-stage, as when a stage first imports Ray)

        logging.getLogger("palign_ray.problems").info(
            "loading"
        )  # the next record of ours adopts them
        logging.getLogger("ray.data.test_console").info("inside the stage")
        return {
            "num_input": 3,
            "summary": {"num_quarantined": 1, "reasons": {"gold_not_extractable": 1}},
        }

    cfg = load_config(None, [f"run.run_dir={tmp_path / 'run'}"])
    stage = P.Stage("problems", (), ("problems",), False, body)
    sd = StageDir(tmp_path / "run" / "problems")
    with C.run_console(tmp_path / "run", verbose=False) as logs:
        P._run_stage(stage, P.StageRun(cfg, sd, "h", {}, tmp_path / "run"))
    assert "inside the stage" in (logs / "problems.log").read_text()
    shown = [x for x in term.getvalue().splitlines() if "problems" in x and "logs:" not in x]
    assert len(shown) == 1 and "3 in → 0 out, 1 quarantined (gold_not_extractable 1)" in shown[0], (
        term.getvalue()
    )


def test_the_records_that_drive_the_console_are_still_logged_with_these_formats():
    """console matches pipeline's and streaming's format strings: a reworded message must update console too."""
    pipeline = (REPO / "palign_ray" / "pipeline.py").read_text()
    streaming = (REPO / "palign_ray" / "streaming.py").read_text()
    for fmt in (C.STAGE_START, C.STAGE_END, C.STAGE_SKIPPED):
        assert f'"{fmt}"' in pipeline, fmt
    assert f'"{C.PART_LINE}"' in streaming


def test_summary_lines_carry_quarantine_engine_restarts_and_the_actors_judge_warnings():
    from palign_ray.config import load_config

    cfg = load_config(None, ["ray.num_actors=2", "judge.engine.num_actors=1"])
    m = {
        "num_input": 32,
        "num_output": 30,
        "num_quarantined": 2,
        "reasons": {"no_sentences": 2},
        "engine_starts": 3,
        "passes": 1,
        "wall_s": 20.4,
        "summaries": [
            {"degenerate": ["ENOUGH on 98% of probes"]},
            {"degenerate": ["ENOUGH on 98% of probes"]},
            {},
        ],
    }
    lines = C.summary_lines("truncate", m, cfg)
    assert lines[0] == (
        logging.INFO,
        "truncate  32 in → 30 out, 2 quarantined (no_sentences 2) · 3 engine starts · 20 s",
    )
    warns = [t for lvl, t in lines[1:] if lvl == logging.WARNING]
    assert (
        len(warns) == 2
        and "2 engine restart(s)" in warns[0]
        and "1 actor(s) × 1 pass(es)" in warns[0]
    )
    assert (
        warns[1]
        == "truncate: degenerate judge: ENOUGH on 98% of probes; the cuts say little (see judge.calibration)"
    )
    ok = C.summary_lines("teacher", {**m, "engine_starts": 4, "passes": 2, "summaries": []}, cfg)
    assert (
        len(ok) == 1 and "4 engine starts, 2 passes" in ok[0][1]
    )  # 2 actors × 2 passes: no restart


def test_summary_lines_of_train_and_eval():
    train = C.summary_lines(
        "train",
        {
            "wall_s": 81,
            "metrics": {
                "num_examples": 20,
                "num_steps": 5,
                "final_loss": 1.2345,
                "restarts": [{"step": 3}],
            },
        },
    )
    assert train[0][1] == "train     20 examples, 5 steps, final loss 1.234 · 81 s"
    assert train[1][0] == logging.WARNING and "restarted 1 time(s)" in train[1][1]
    head = {"average": {"pass@k": {"1": 0.0625, "3": 0.125}}}
    ev = C.summary_lines("eval", {"wall_s": 116, "base": head, "trained": head})
    assert ev == [
        (
            logging.INFO,
            "eval      base pass@1 0.062, pass@3 0.125 → trained pass@1 0.062, pass@3 0.125 · 116 s",
        )
    ]
    base = C.summary_lines("base_eval", {"wall_s": 240, "base": head})
    assert base == [(logging.INFO, "base_eval base pass@1 0.062, pass@3 0.125 · 240 s")]


def test_worker_log_output_is_copied_from_where_the_stage_started(tmp_path, monkeypatch):
    old, new = tmp_path / "worker-a.err", tmp_path / "worker-b.out"
    old.write_text("before the stage\n")
    offsets = {old: old.stat().st_size}
    with old.open("a") as f:
        f.write("engine started\n")
    new.write_text(":job_id:01000000\n:actor_name:MapWorker\nrank 0 ready\n")
    (tmp_path / "worker-c.out").write_text(
        ":job_id:01000000\n:task_name:ReadFiles\n"
    )  # bookkeeping only
    monkeypatch.setattr(C, "worker_logs", lambda: [old, new, tmp_path / "worker-c.out"])
    out = io.StringIO()
    assert C.copy_new_output(offsets, out) == 2
    text = out.getvalue()
    assert "engine started" in text and "rank 0 ready" in text and "before the stage" not in text
    assert ":job_id:" not in text and "worker-c" not in text
    assert C.copy_new_output({old: old.stat().st_size, new: new.stat().st_size}, io.StringIO()) == 0


def test_console_imports_no_heavy_package():
    code = "import sys, palign_ray.console, palign_ray.cli; print([m for m in ('ray', 'torch', 'vllm') if m in sys.modules])"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_a_crash_inside_the_run_lands_in_run_log_and_in_the_stage_log(tmp_path, term):
    with pytest.raises(RuntimeError), C.run_console(tmp_path, verbose=False):
        logging.getLogger("palign_ray.pipeline").info(C.STAGE_START, "train")
        raise RuntimeError("the training ranks died")
    for name in ("run.log", "train.log"):
        assert "RuntimeError: the training ranks died" in (tmp_path / "logs" / name).read_text()


def test_the_problems_line_says_what_the_screen_did():
    """Issue 26.3: duplicates and benchmark overlaps on the console, or why nothing was checked."""
    from palign_ray.summaries import screen_line

    screened = {
        "dedup": True,
        "num_duplicates": 2,
        "num_contaminated": 1,
        "decontaminated_against": ["aime24", "math500"],
    }
    assert screen_line(screened) == "2 duplicates, 1 overlapping aime24, math500"
    none = {"dedup": True, "num_duplicates": 0, "not_checked": ["math500: not on disk"]}
    assert screen_line(none) == "0 duplicates, no benchmark overlap check (math500: not on disk)"
