"""Faults: crashes mid-write, a killed judge actor, a killed driver; nothing lost, nothing duplicated.

Fast tests cover atomic writes and chunked resume without a model; the `slow` ones kill real processes
(a Ray Data actor running vLLM on the tiny model; a `palign run` driver) and compare with an undisturbed run.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from palign_ray import records as R
from palign_ray.artifacts import TMP_PREFIX, StageDir, read_rows, write_parquet
from palign_ray.config import config_from_dict
from tests.process_helpers import env, finish, kill_group, kill_when

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- atomic writes


def _half_writing(monkeypatch: pytest.MonkeyPatch) -> None:
    """pyarrow.parquet.write_table writes some bytes to its target, then 'crashes'."""
    import pyarrow.parquet as pq

    def crash(table: Any, where: Any, *a: Any, **k: Any) -> None:
        Path(where).write_bytes(b"PAR1\x00\x00partial")
        raise OSError("disk died mid-write")

    monkeypatch.setattr(pq, "write_table", crash)


def test_crash_mid_parquet_write_leaves_no_visible_part(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sd = StageDir(tmp_path / "stage")
    sd.write_part([{R.PROBLEM_ID: "a", "x": 1}], [])
    _half_writing(monkeypatch)
    with pytest.raises(OSError, match="disk died"):
        sd.write_part(
            [{R.PROBLEM_ID: "b", "x": 2}],
            [{R.STAGE: "s", R.PROBLEM_ID: "c", R.REASON: "r", R.DETAIL: ""}],
        )
    with pytest.raises(OSError):
        write_parquet(tmp_path / "plain.parquet", [{"a": 1}])
    monkeypatch.undo()
    visible = sorted(p.relative_to(sd.root).as_posix() for p in sd.root.rglob("*") if p.is_file())
    part = sd.commits()[0]["part"]
    # the good part (file + commit marker) and the crashed part's first file, which no marker names: invisible
    assert [v for v in visible if not v.startswith("quarantine/")] == [
        f"commits/{part}.json",
        f"{part}.parquet",
    ]
    assert len(sd.commits()) == 1 and not [
        v for v in visible if "/.tmp-" in v or v.startswith(".tmp-")
    ]
    assert not (tmp_path / "plain.parquet").exists() and not list(tmp_path.glob(TMP_PREFIX + "*"))
    assert [r[R.PROBLEM_ID] for r in sd.output_rows()] == ["a"] and sd.quarantine_rows() == []
    assert not sd.manifest_path.exists()


def test_readers_ignore_leftover_tmp_files(tmp_path: Path) -> None:
    """A SIGKILL between write and rename leaves a .tmp- file: no reader may see it."""
    sd = StageDir(tmp_path / "stage")
    sd.write_part(
        [{R.PROBLEM_ID: "a"}], [{R.STAGE: "s", R.PROBLEM_ID: "q", R.REASON: "r", R.DETAIL: ""}]
    )
    good = next(sd.root.glob("part-*.parquet")).read_bytes()
    (sd.root / f"{TMP_PREFIX}abc.parquet").write_bytes(good[: len(good) // 2])  # truncated Parquet
    (sd.root / f"{TMP_PREFIX}def.parquet").write_bytes(good)  # complete but never renamed
    (sd.quarantine_dir / f"{TMP_PREFIX}x.parquet").write_bytes(b"junk")
    assert [r[R.PROBLEM_ID] for r in sd.output_rows()] == ["a"]
    assert [r[R.PROBLEM_ID] for r in sd.quarantine_rows()] == ["q"]
    assert sd.done_ids() == {"a", "q"}
    rows, bad = read_rows(sd.root)  # the directory reader used for `--input <stage dir>`
    assert [r[R.PROBLEM_ID] for r in rows] == ["a"] and bad == []


# --------------------------------------------------------------------------- judge actor killed mid-round


def _my_judge_workers() -> list[tuple[int, str]]:
    """(pid, process title) of judge actor processes of THIS test's Ray (descendants of this process only)."""
    import psutil

    me, found = os.getpid(), []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info.get("cmdline") or [])
        if "PartUDF" not in cmd:
            continue
        try:
            if me in {
                a.pid for a in p.parents()
            }:  # never touch another developer's Ray on a shared box
                found.append((p.info["pid"], cmd.strip()))  # Ray pads the title with spaces
        except psutil.Error:
            continue
    return found


class ActorKiller(threading.Thread):
    """SIGKILLs the judge actor once, when its process title shows a running batch (a method call)."""

    def __init__(self, delay_s: float, deadline_s: float = 240.0):
        super().__init__(daemon=True)
        self.delay_s, self.deadline = delay_s, time.monotonic() + deadline_s
        self.killed: tuple[int, str] | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            # Ray titles a worker "ray::MapWorker(MapBatches(PartUDF)).<method>" while it runs a method
            busy = [
                (pid, t)
                for pid, t in _my_judge_workers()
                if ")." in t and not t.endswith(".__init__")
            ]
            if busy:
                time.sleep(self.delay_s)  # let the first round's engine call get going
                pid, title = busy[0]
                try:
                    os.kill(pid, signal.SIGKILL)
                    self.killed = (pid, title)
                except ProcessLookupError:
                    continue
                return
            time.sleep(0.05)


def _traces(n: int) -> list[dict[str, Any]]:
    return [
        {
            R.PROBLEM_ID: f"k{i}",
            R.QUESTION: f"What is {i} + {i + 1}?",
            R.COT: " ".join(f"Step {j}: we combine {i} and {j} carefully." for j in range(1, 9)),
            R.ANSWER: str(2 * i + 1),
        }
        for i in range(n)
    ]


# An engine's logprobs are not batch-invariant: a resumed run batches (and prefix-caches) its probes
# differently, and the low bits of a probability move with it. CI on 2026-12-05 (float32 engine, AVX2
# host) failed on one problem's p_enough while its rounds, k and verdicts matched; a rerun here was
# bit-identical (24 of 24 probes). Decisions, text and counts compare exactly; probabilities to this.
_FLOAT_TOL = 1e-4


def _same(a: Any, b: Any) -> bool:
    """Equality of stage values: exact for everything but floats, where NaN equals NaN (unset
    calibration columns are NaN in both runs) and values agree to `_FLOAT_TOL`."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return (a != a and b != b) or math.isclose(a, b, rel_tol=_FLOAT_TOL, abs_tol=_FLOAT_TOL)
    return type(a) is type(b) and a == b


def test_same_is_exact_except_for_float_noise() -> None:
    trace = [{"k": 3, "verdict": False, "p_enough": 0.3689186637109251}]
    noisy = [{"k": 3, "verdict": False, "p_enough": 0.3689186637109999}]
    assert _same(trace, noisy) and _same(float("nan"), float("nan"))
    assert not _same(trace, [{**noisy[0], "verdict": True}])  # a decision moved
    assert not _same(trace, [{**noisy[0], "p_enough": 0.37}])  # a probability moved
    assert not _same(trace, trace + trace) and not _same(1, True) and not _same("1", 1)


def _comparable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: r[R.PROBLEM_ID])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_judge_actor_killed_mid_round_loses_nothing(ray_session, tiny_model: str) -> None:
    from palign_ray.judge.stage import truncate_rows

    cfg = config_from_dict(
        {
            "judge": {"model": tiny_model, "search": "binary", "verdict": "logprob"},
            "engine": {"max_model_len": 1024, "max_num_seqs": 16},
            "ray": {"num_actors": 1, "num_cpus_per_actor": 0.5, "batch_size": 8},
            "run": {"seed": 7},
        }
    )
    rows = _traces(8)
    ref_out, ref_bad, ref_summary = truncate_rows(rows, cfg)
    assert len(ref_out) + len(ref_bad) == len(rows)
    # the batch takes longer than the killer's delay, so the kill lands inside the batch, not after it
    assert ref_summary["judge_s"] > 0.3, ref_summary["judge_s"]

    killer = ActorKiller(delay_s=0.3)
    killer.start()
    t0 = time.perf_counter()
    out, bad, summary = truncate_rows(rows, cfg)
    killer.stop.set()
    killer.join(5)
    wall = time.perf_counter() - t0
    assert killer.killed is not None, "the judge actor was never seen running a batch"
    ids = [r[R.PROBLEM_ID] for r in out] + [q[R.PROBLEM_ID] for q in bad]
    assert sorted(ids) == sorted(r[R.PROBLEM_ID] for r in rows)  # each exactly once
    diffs = {
        (a[R.PROBLEM_ID], k): (a[k], b[k])
        for a, b in zip(_comparable(out), _comparable(ref_out), strict=True)
        for k in a
        if not _same(a[k], b[k])
    }
    assert not diffs and bad == ref_bad, diffs  # same seeds → same results
    print(
        f"killed pid {killer.killed[0]} titled {killer.killed[1]!r}; rerun wall {wall:.1f}s; out={len(out)} quarantined={len(bad)}; "
        f"engine_calls ref={ref_summary['engine_calls']} faulted={summary['engine_calls']}"
    )


# --------------------------------------------------------------------------- driver killed


def _run_cmd(run_dir: Path, tiny_model: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "palign_ray",
        "run",
        "--stages",
        "problems,teacher,truncate",
        f"run.run_dir={run_dir}",
        "run.chunk_size=2",
        "problems.source=builtin",
        "problems.num_problems=8",
        f"teacher.model={tiny_model}",
        "teacher.use_reference_solutions=true",
        "teacher.num_samples=1",
        "teacher.max_tokens=8",
        f"judge.model={tiny_model}",
        "judge.search=binary",
        "engine.max_model_len=1024",
        "ray.num_cpus=2",
        "ray.num_actors=1",
        "ray.num_cpus_per_actor=0.5",
        "ray.max_concurrent_batches=1",  # parts one after another, so a kill lands between them
    ]


# Timings, and prefix-cache hits (they depend on what the engine computed before, which a resumed
# run changes): not results.
_VOLATILE = ("wall_s", "judge_s", "_source_line", "cached_tokens")


def _stable(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _stable(x) for k, x in v.items() if k not in _VOLATILE}
    return [_stable(x) for x in v] if isinstance(v, list) else v


def _stage_rows(run_dir: Path, stage: str) -> tuple[list[dict], list[dict]]:
    sd = StageDir(run_dir / stage)
    clean = lambda rows: sorted(map(_stable, rows), key=lambda r: r[R.PROBLEM_ID])  # noqa: E731
    return clean(sd.output_rows()), clean(sd.quarantine_rows())


def _summaries(run_dir: Path, stage: str) -> dict[str, dict]:
    """Committed parts of a stage by name (their num_input: rows that part processed)."""
    return {c["part"]: c for c in StageDir(run_dir / stage).commits()}


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_driver_killed_mid_stage_resumes_without_recompute(tmp_path: Path, tiny_model: str) -> None:
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    logs = tmp_path / "logs"
    logs.mkdir()
    ref = subprocess.run(
        _run_cmd(ref_dir, tiny_model),
        env=env(),
        cwd=tmp_path,
        timeout=600,
        stdout=open(logs / "ref.out", "w"),
        stderr=subprocess.STDOUT,
    )
    assert ref.returncode == 0, (logs / "ref.out").read_text()[-3000:]

    proc = subprocess.Popen(
        _run_cmd(run_dir, tiny_model),
        env=env(),
        cwd=tmp_path,
        start_new_session=True,
        stdout=open(logs / "first.out", "w"),
        stderr=subprocess.STDOUT,
    )
    judge = StageDir(
        run_dir / "truncate"
    )  # judge parts take seconds; teacher parts (reference solutions) do not
    try:
        deadline = time.monotonic() + 500
        while time.monotonic() < deadline and proc.poll() is None:
            if judge.commits() and not judge.manifest_path.exists():  # a part is committed
                break
            time.sleep(0.1)
        assert proc.poll() is None, (
            "the run finished before it could be killed:\n"
            + (logs / "first.out").read_text()[-3000:]
        )
        proc.send_signal(signal.SIGKILL)  # the driver only, as a preempted head process would die
    finally:
        kill_group(proc)
    assert not judge.manifest_path.exists()
    done_before = judge.done_ids()
    summaries_before = set(_summaries(run_dir, "truncate"))
    teacher_manifest = (run_dir / "teacher" / "manifest.json").read_bytes()
    assert 0 < len(done_before) < 8

    rerun_start = time.time()
    again = subprocess.run(
        _run_cmd(run_dir, tiny_model),
        env=env(),
        cwd=tmp_path,
        timeout=600,
        stdout=open(logs / "second.out", "w"),
        stderr=subprocess.STDOUT,
    )
    assert again.returncode == 0, (logs / "second.out").read_text()[-3000:]

    # finished chunks were not recomputed: the rerun's chunk summaries cover exactly the missing problems
    new = {k: v for k, v in _summaries(run_dir, "truncate").items() if k not in summaries_before}
    assert sum(s["num_input"] for s in new.values()) == 8 - len(done_before)
    assert (
        json.loads((run_dir / "truncate" / "manifest.json").read_text())["engine_starts"] == 1
    )  # one actor, one start
    assert (
        run_dir / "teacher" / "manifest.json"
    ).read_bytes() == teacher_manifest  # done: not rerun
    assert json.loads((run_dir / "problems" / "manifest.json").read_text())["num_output"] == 8
    for stage in ("teacher", "truncate"):
        out, quar = _stage_rows(run_dir, stage)
        ids = [r[R.PROBLEM_ID] for r in out + quar]
        assert len(ids) == len(set(ids)) == 8, (stage, ids)  # no duplicates, nothing lost
        ref_out, ref_quar = _stage_rows(ref_dir, stage)
        diffs = {
            (a[R.PROBLEM_ID], k): (a[k], b[k])
            for a, b in zip(out, ref_out, strict=True)
            for k in a
            if not _same(a[k], b[k])
        }
        assert not diffs and _same(quar, ref_quar), (stage, diffs)  # same as the uninterrupted run
        # the rerun left no temporary file of its own (the killed run's may stay: see UNCOMMITTED_GRACE_S)
        assert not [
            p for p in (run_dir / stage).rglob(TMP_PREFIX + "*") if p.stat().st_mtime >= rerun_start
        ], stage
    print(
        f"killed after {len(done_before)} judged rows; rerun processed {8 - len(done_before)} in {len(new)} chunks"
    )


# --------------------------------------------------------------------------- driver killed in the later stages


def _late_cmd(run_dir: Path) -> list[str]:
    """The default config, small: SmolLM2 as teacher/judge/student (the tiny random model accepts no continuation)."""
    return [
        sys.executable,
        "-m",
        "palign_ray",
        "run",
        str(REPO / "jobs" / "configs" / "default.yaml"),
        f"run.run_dir={run_dir}",
        "run.chunk_size=2",
        "problems.num_problems=8",
        "teacher.num_samples=1",
        "teacher.max_tokens=16",
        "align.num_samples=4",
        "align.max_tokens=192",
        "judge.audit_problems=0",  # the audit has its own tests; this one kills align, train and eval
        # the judge is not what this test kills: the logprob self-judge keeps truncate short
        "judge.verdict=logprob",
        "judge.calibration=contextual",
        "judge.contextual_threshold=-0.1",
        "sft.packing=false",
        "sft.micro_batch_size=1",
        "sft.max_steps=4",
        "sft.checkpoint_every=1",
        "eval.num_problems=4",
        "eval.num_samples=2",
        "eval.max_tokens=64",
        "ray.num_cpus=2",
        "ray.max_concurrent_batches=1",  # align parts one after another, so the kill lands between them
    ]


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_driver_killed_in_align_train_and_eval_resumes_to_identical_outputs(
    tmp_path: Path, default_model: str
) -> None:
    """Kill `palign run` mid-align, mid-training and mid-eval; each rerun continues, the end equals an uninterrupted run."""
    import shutil

    from palign_ray.sft.checkpoints import checkpoint_step, latest_complete_checkpoint, run_dir_of

    ref_dir, run_dir, logs = tmp_path / "ref", tmp_path / "run", tmp_path / "logs"
    logs.mkdir()
    finish(_late_cmd(ref_dir), tmp_path, logs / "ref.out")
    # The stages before align were killed and resumed in the test above; start this run from their output.
    run_dir.mkdir()
    for stage in ("problems", "teacher", "truncate"):
        shutil.copytree(ref_dir / stage, run_dir / stage)
    cmd = _late_cmd(run_dir)

    align, train, ev = StageDir(run_dir / "align"), run_dir / "train", run_dir / "eval"
    kill_when(
        cmd,
        tmp_path,
        logs / "1.out",
        lambda: bool(align.commits()),  # a part is committed
        "mid-align",
    )
    assert not align.manifest_path.exists()
    done_before, summaries_before = align.done_ids(), set(_summaries(run_dir, "align"))
    assert 0 < len(done_before) < 8

    ckpts = run_dir_of(train / "model")
    kill_when(
        cmd,
        tmp_path,
        logs / "2.out",
        lambda: (latest_complete_checkpoint(ckpts) if ckpts.is_dir() else None) is not None,
        "mid-training",
    )
    assert not (train / "manifest.json").exists()
    killed_at_step = checkpoint_step(latest_complete_checkpoint(ckpts))
    new = {k: v for k, v in _summaries(run_dir, "align").items() if k not in summaries_before}
    assert sum(s["num_input"] for s in new.values()) == 8 - len(
        done_before
    )  # finished align parts not redone

    base = run_dir / "base_eval" / "base"
    trained = StageDir(ev / "trained" / "samples")
    kill_when(
        cmd,
        tmp_path,
        logs / "3.out",
        lambda: bool(trained.commits()),  # base done; the trained model's first part committed
        "mid-eval",
    )
    assert not (ev / "manifest.json").exists()
    base_written = (base / "metrics.json").stat().st_mtime_ns
    parts_before = {c["part"]: c["problem_ids"] for c in trained.commits()}
    assert 0 < sum(map(len, parts_before.values())) < 4  # eval.num_problems=4 in parts of 2
    finish(cmd, tmp_path, logs / "4.out")

    assert (base / "metrics.json").stat().st_mtime_ns == base_written  # base eval not redone
    ev_metrics = json.loads((ev / "trained" / "metrics.json").read_text())
    after = {c["part"]: c["problem_ids"] for c in trained.commits()}
    assert all(
        after[p] == ids for p, ids in parts_before.items()
    )  # committed parts kept as they were
    # only the missing problems were generated by the rerun
    assert ev_metrics["stream"]["num_done_before"] == sum(map(len, parts_before.values()))
    assert ev_metrics["stream"]["num_processed"] == 4 - ev_metrics["stream"]["num_done_before"]
    metrics = json.loads((train / "model" / "metrics.json").read_text())
    ref_metrics = json.loads((ref_dir / "train" / "model" / "metrics.json").read_text())
    assert metrics["num_steps"] == ref_metrics["num_steps"] == 4
    assert metrics["restarts"], "the rerun should have continued from a checkpoint"
    assert [h["step"] for h in metrics["history"]] == [h["step"] for h in ref_metrics["history"]]
    assert [h["loss"] for h in metrics["history"]] == pytest.approx(
        [h["loss"] for h in ref_metrics["history"]], rel=1e-4
    )
    out, quar = _stage_rows(run_dir, "align")
    samples = [
        (r[R.PROBLEM_ID], r["sample_index"]) for r in out + quar
    ]  # one row per continuation sample
    assert len(samples) == len(set(samples)) == 8 * 4, samples  # no duplicates, nothing lost
    ref_out, ref_quar = _stage_rows(ref_dir, "align")
    by_sample = lambda rows: sorted(rows, key=lambda r: (r[R.PROBLEM_ID], r["sample_index"]))  # noqa: E731
    assert by_sample(out) == by_sample(ref_out) and by_sample(quar) == by_sample(ref_quar)
    shard_rows = lambda d: sorted(  # noqa: E731
        map(json.dumps, read_rows(str(d / "sft_data" / "shards"), "t")[0])
    )
    assert shard_rows(run_dir) == shard_rows(ref_dir)
    for stage, which in (("base_eval", "base"), ("eval", "trained")):
        got, ref = (
            _jsonl(run_dir / stage / which / "samples.jsonl"),
            _jsonl(ref_dir / stage / which / "samples.jsonl"),
        )
        assert got == ref, which
    print(
        f"align: killed after {len(done_before)}/8 problems; train: killed at checkpoint step {killed_at_step}, "
        f"restarts {metrics['restarts']}; losses {[h['loss'] for h in metrics['history']]}; eval: killed "
        f"after {ev_metrics['stream']['num_done_before']}/4 problems, the rerun generated "
        f"{ev_metrics['stream']['num_processed']}"
    )
