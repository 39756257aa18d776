"""Streaming row stages: real Ray Data with engine-free workers (resume, accounting, retries, atomic parts),
and one real vLLM stage on the tiny model (one engine start for a multi-part stage)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import ray.cloudpickle as ray_cloudpickle

from palign_ray import records as R
from palign_ray.artifacts import StageDir
from palign_ray.config import RayConfig, load_config
from palign_ray.streaming import StreamJob, merge_summaries, run_rows, run_stream

# Ray workers cannot import this test module by name: ship its classes by value.
ray_cloudpickle.register_pickle_by_value(sys.modules[__name__])

RAY = RayConfig(
    num_cpus=4, num_actors=1, num_cpus_per_actor=0.5, batch_size=4, max_concurrent_batches=2
)


class CountingWorker:
    """Doubles x, quarantines multiples of 3; raises on `crash_on` while `flag` exists; fails `flaky` once (retryable)."""

    def __init__(
        self,
        log_dir: str,
        crash_on: str = "",
        flag: str = "",
        flaky: str = "",
        drop: str = "",
        sleep_s: float = 0.0,
        on_engine_start: Any = None,
    ):
        self.sleep_s = sleep_s
        self.log_dir, self.crash_on, self.flag, self.flaky, self.drop = (
            Path(log_dir),
            crash_on,
            flag,
            flaky,
            drop,
        )
        on_engine_start({"model": "none", "start_s": 0.0})  # count a "start" like an engine would

    async def process(self, rows: list[dict[str, Any]]) -> tuple[list[dict], list[dict], dict]:
        ids = [r[R.PROBLEM_ID] for r in rows]
        if self.crash_on in ids and Path(self.flag).exists():
            raise RuntimeError("worker died mid-stage")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        (self.log_dir / f"{'-'.join(ids)}.json").write_text(json.dumps(ids))
        await asyncio.sleep(self.sleep_s)
        out, quar = [], []
        for r in rows:
            pid = r[R.PROBLEM_ID]
            if pid == self.drop:
                continue
            if pid == self.flaky and not (self.log_dir / "flaky-done").exists():
                (self.log_dir / "flaky-done").write_text("1")
                quar.append(
                    {
                        R.STAGE: "t",
                        R.PROBLEM_ID: pid,
                        R.REASON: "judge_engine_error",
                        R.DETAIL: "boom",
                    }
                )
            elif r["x"] % 3:
                out.append({R.PROBLEM_ID: pid, "y": r["x"] * 2})
            else:
                quar.append({R.STAGE: "t", R.PROBLEM_ID: pid, R.REASON: "div3", R.DETAIL: ""})
        return out, quar, {"num_in": len(rows), "tokens": 10 * len(rows)}

    def close(self) -> None:
        pass


def _input(tmp_path: Path, n: int) -> StageDir:
    src = StageDir(tmp_path / "input")
    rows = [{R.PROBLEM_ID: f"p{i:02d}", "x": i} for i in range(n)]
    src.write_part(rows[: n // 2], [])
    src.write_part(rows[n // 2 :], [])
    return src


def _job(tmp_path: Path, part_rows: int = 3, ray_cfg: RayConfig = RAY, **kw: Any) -> StreamJob:
    return StreamJob(
        "t", CountingWorker, {"log_dir": str(tmp_path / "calls"), **kw}, ray_cfg, part_rows
    )


def _settled(sd: StageDir, quiet_s: float = 3.0) -> set[str]:
    """done ids once no part was committed for quiet_s (parts in flight when a sibling failed may still land)."""
    import time

    last, since = -1, time.monotonic()
    while time.monotonic() - since < quiet_s:
        n = len(sd.commits())
        if n != last:
            last, since = n, time.monotonic()
        time.sleep(0.2)
    return sd.done_ids()


def _processed(tmp_path: Path) -> list[str]:
    return sorted(
        i for p in (tmp_path / "calls").glob("p*.json") for i in json.loads(p.read_text())
    )


def _ids(sd: StageDir) -> list[str]:
    return [r[R.PROBLEM_ID] for r in sd.output_rows() + sd.quarantine_rows()]


@pytest.mark.timeout(600)
def test_stream_writes_parts_on_workers_and_resumes_after_a_crash(
    tmp_path: Path, ray_session: Any
) -> None:
    src, sd = _input(tmp_path, 12), StageDir(tmp_path / "t")
    flag = tmp_path / "crash"
    flag.write_text("1")
    one_at_a_time = dataclasses.replace(RAY, max_concurrent_batches=1)
    with pytest.raises(Exception, match="worker died"):
        job = _job(tmp_path, ray_cfg=one_at_a_time, crash_on="p10", flag=str(flag))
        run_stream(job, src.output_files(), sd)
    done_before = _settled(sd)
    assert (
        done_before and "p10" not in done_before and len(done_before) < 12
    )  # finished parts survived
    assert sum(c["num_input"] for c in sd.commits()) == len(done_before)
    flag.unlink()
    (tmp_path / "calls").rename(tmp_path / "calls-first")
    res = run_stream(_job(tmp_path, crash_on="p10", flag=str(flag)), src.output_files(), sd)
    assert _processed(tmp_path) == sorted(
        f"p{i:02d}" for i in range(12) if f"p{i:02d}" not in done_before
    )  # only the rest
    ids = _ids(sd)
    assert len(ids) == len(set(ids)) == 12  # nothing lost, nothing twice
    assert (
        res.num_input == 12 and res.num_done_before == len(done_before) and res.engine_starts == 1
    )
    assert {q[R.PROBLEM_ID] for q in sd.quarantine_rows()} == {"p00", "p03", "p06", "p09"}
    assert all(
        c["num_input"] <= 3 for c in sd.commits()
    )  # part size = run.chunk_size, the resume granularity


@pytest.mark.timeout(600)
def test_retryable_rows_are_never_committed_and_get_another_pass(
    tmp_path: Path, ray_session: Any
) -> None:
    src, sd = _input(tmp_path, 8), StageDir(tmp_path / "t")
    res = run_stream(_job(tmp_path, flaky="p04"), src.output_files(), sd)
    assert res.passes == 2 and not res.retry_failed
    assert _processed(tmp_path).count("p04") == 2  # judged again in the second pass
    assert sorted(_ids(sd)) == [
        f"p{i:02d}" for i in range(8)
    ] and "judge_engine_error" not in json.dumps(sd.commits())


@pytest.mark.timeout(600)
def test_lost_rows_become_quarantine(tmp_path: Path, ray_session: Any) -> None:
    src, sd = _input(tmp_path, 6), StageDir(tmp_path / "t")
    run_stream(_job(tmp_path, drop="p02"), src.output_files(), sd)
    assert {q[R.PROBLEM_ID]: q[R.REASON] for q in sd.quarantine_rows()}["p02"] == "lost_in_stage"
    assert len(_ids(sd)) == 6


@pytest.mark.timeout(600)
def test_run_rows_in_memory(tmp_path: Path, ray_session: Any) -> None:
    rows = [{R.PROBLEM_ID: f"q{i}", "x": i} for i in range(5)]
    out, quar, parts, res = run_rows(_job(tmp_path, part_rows=2), rows)
    assert sorted(r[R.PROBLEM_ID] for r in out + quar) == [f"q{i}" for i in range(5)]
    assert (
        merge_summaries(parts)["num_in"] == 5
        and merge_summaries(parts)["tokens"] == 50
        and res.engine_starts == 1
    )


@pytest.mark.timeout(600)
def test_one_input_file_is_spread_over_every_actor(tmp_path: Path, ray_session: Any) -> None:
    """A single input file (one Parquet block) still gives each actor parts, one part per task."""
    src, sd = StageDir(tmp_path / "input"), StageDir(tmp_path / "t")
    src.write_part([{R.PROBLEM_ID: f"p{i:02d}", "x": i} for i in range(8)], [])
    two = dataclasses.replace(RAY, num_actors=2, max_concurrent_batches=1)
    res = run_stream(_job(tmp_path, part_rows=2, ray_cfg=two, sleep_s=1.0), src.output_files(), sd)
    assert res.actors_used == 2 and res.engine_starts == 2
    assert sorted(c["num_input"] for c in sd.commits()) == [2, 2, 2, 2]  # parts of run.chunk_size
    assert sorted(_ids(sd)) == [f"p{i:02d}" for i in range(8)]


@pytest.mark.timeout(600)
def test_whole_files_keep_a_problems_rows_in_one_part_and_resume_per_file(
    tmp_path: Path, ray_session: Any
) -> None:
    """sft_data's mode: each input file is one part, so a problem with several rows (align's samples)
    is never split across parts, and a rerun redoes exactly the files without a committed part."""
    src = StageDir(tmp_path / "input")
    files = [["p00", "p00", "p01"], ["p02", "p02", "p02"], ["p03"]]
    x = iter(range(1, 100))
    for ids in files:
        src.write_part([{R.PROBLEM_ID: i, "x": next(x)} for i in ids], [])
    sd = StageDir(tmp_path / "t")
    job = dataclasses.replace(_job(tmp_path, part_rows=2), whole_files=True)  # part_rows unused
    res = run_stream(job, src.output_files(), sd)
    calls = sorted(json.loads(p.read_text()) for p in (tmp_path / "calls").glob("p*.json"))
    assert calls == sorted(files)  # one call per file, whole
    assert res.num_parts == 3 and sorted(_ids(sd)) == sorted(i for f in files for i in f)
    # a stage killed before the part of p02's file was committed: only that file runs again
    (c,) = [c for c in sd.commits() if c["problem_ids"] == ["p02"]]
    (sd.commits_dir / f"{c['part']}.json").unlink()
    again = run_stream(job, src.output_files(), sd)
    assert (again.num_done_before, again.num_processed, again.num_parts) == (4, 3, 1)
    assert sorted(_ids(sd)) == sorted(i for f in files for i in f)


def test_merge_summaries_sums_numbers_and_merges_dicts() -> None:
    got = merge_summaries(
        [
            {"a": 1, "d": {"x": 1}, "s": "first", "b": True},
            {"a": 2, "d": {"x": 2, "y": 1}, "s": "second"},
        ]
    )
    assert got == {"a": 3, "d": {"x": 3, "y": 1}, "s": "first", "b": True}


def test_part_commit_is_all_or_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 15.3: quarantine was written before output, and done_ids counted either file, so a kill in between
    marked a problem done with its accepted rows gone. Now nothing of a part is visible before its commit marker."""
    import palign_ray.artifacts as A

    sd = StageDir(tmp_path / "align")
    real = A.write_parquet
    calls = {"n": 0}

    def dies_on_second_file(path: Any, rows: Any, schema: Any = None) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("killed between the quarantine and the output file")
        real(path, rows, schema)

    monkeypatch.setattr(A, "write_parquet", dies_on_second_file)
    with pytest.raises(OSError):
        sd.write_part(
            [{R.PROBLEM_ID: "a", "sample_index": 0}],
            [
                {
                    R.STAGE: "align",
                    R.PROBLEM_ID: "a",
                    R.REASON: "wrong_answer",
                    R.DETAIL: "",
                    "sample_index": 1,
                }
            ],
        )
    monkeypatch.undo()
    assert (
        sd.done_ids() == set() and sd.output_rows() == [] and sd.quarantine_rows() == []
    )  # "a" will be redone
    assert (
        sd.remove_uncommitted() == 0
    )  # the orphan is fresh: it may belong to a commit not yet seen
    assert sd.remove_uncommitted(grace_s=0) == 1  # the orphan quarantine file
    sd.write_part(
        [{R.PROBLEM_ID: "a", "sample_index": 0}],
        [
            {
                R.STAGE: "align",
                R.PROBLEM_ID: "a",
                R.REASON: "wrong_answer",
                R.DETAIL: "",
                "sample_index": 1,
            }
        ],
    )
    assert sd.done_ids() == {"a"} and len(sd.output_rows()) == len(sd.quarantine_rows()) == 1


@pytest.mark.timeout(900)
def test_real_teacher_stage_starts_one_engine_for_many_parts(
    tmp_path: Path, ray_session: Any, tiny_model: str
) -> None:
    """Ray Data + vLLM on the tiny model: 8 problems in parts of 2 → 4 parts, one engine start (one actor)."""
    from palign_ray import pipeline as P

    cfg = load_config(
        None,
        [
            f"run.run_dir={tmp_path / 'run'}",
            "run.chunk_size=2",
            "problems.num_problems=8",
            f"teacher.model={tiny_model}",
            "teacher.num_samples=1",
            "teacher.max_tokens=8",
            "teacher.use_reference_solutions=true",
            "ray.num_cpus=4",
            "engine.max_model_len=1024",
        ],
    )
    manifests = P.run_pipeline(cfg, ["problems", "teacher"])
    m = manifests["teacher"]
    assert (
        m["num_parts"] == 4
        and m["engine_starts"] == 1
        and m["num_output"] + m["num_quarantined"] == 8
    )
    assert len(StageDir(tmp_path / "run" / "teacher").commits()) == 4


def test_a_part_committed_twice_by_a_retried_task_is_dropped(tmp_path: Path) -> None:
    """A task whose actor died after committing is retried: the second commit of the same problems is dropped."""
    sd = StageDir(tmp_path / "t")
    first = sd.write_part([{R.PROBLEM_ID: "a"}, {R.PROBLEM_ID: "b"}], [])
    again = sd.write_part([{R.PROBLEM_ID: "b"}, {R.PROBLEM_ID: "c"}], [])  # b twice; c only here
    assert sd.drop_duplicate_parts() == [again]
    assert [c["part"] for c in sd.commits()] == [first] and sd.done_ids() == {
        "a",
        "b",
    }  # c is redone next pass


def test_unnamed_files_are_deleted_only_after_a_grace_period(tmp_path: Path) -> None:
    """Issue 27.4: on NFS a rerun can list commits/ through a stale cache and see a just-committed part's
    files as orphans. Deleting them lost the part's rows while its marker (seen later) said done."""
    import os

    sd = StageDir(tmp_path / "s")
    part = sd.write_part([{R.PROBLEM_ID: "a"}], [])
    marker = sd.commits_dir / f"{part}.json"
    hidden = marker.read_bytes()
    marker.unlink()  # the listing the rerun sees: the marker is not visible yet
    assert sd.remove_uncommitted() == 0 and (sd.root / f"{part}.parquet").is_file()
    marker.write_bytes(hidden)  # the cache catches up: the part is intact
    assert [r[R.PROBLEM_ID] for r in sd.output_rows()] == ["a"]

    orphan = sd.root / "part-000000000000.parquet"  # a crash before its commit, an hour ago
    orphan.write_bytes(b"partial")
    tmp = sd.root / ".tmp-abc.parquet"
    tmp.write_bytes(b"partial")
    hour_ago = orphan.stat().st_mtime - 3600
    for p in (orphan, tmp):
        os.utime(p, (hour_ago, hour_ago))
    assert sd.remove_uncommitted() == 2 and not orphan.exists() and not tmp.exists()
    assert [r[R.PROBLEM_ID] for r in sd.output_rows()] == ["a"]


@pytest.mark.timeout(600)
def test_a_part_slower_than_ray_datas_stall_guard_still_completes(
    tmp_path: Path, ray_session: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray Data fails a dataset in which no block moved for execution_no_progress_timeout_s (30 min by
    default): a rollout-judge part on CPU ran past it and the compare run died. Parts are long UDF
    calls, so the stage turns the guard off (ray.stall_timeout_s=0); here the default is cut to 2 s
    and each part takes 6 s."""
    import ray

    monkeypatch.setattr(ray.data.DataContext.get_current(), "execution_no_progress_timeout_s", 2.0)
    src, sd = _input(tmp_path, 4), StageDir(tmp_path / "t")
    res = run_stream(_job(tmp_path, part_rows=4, sleep_s=6.0), src.output_files(), sd)
    assert not res.retry_failed and sorted(_ids(sd)) == [f"p{i:02d}" for i in range(4)]
