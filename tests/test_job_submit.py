"""jobs/: every cluster config loads, `python -m jobs.distill` checks configs, a real `ray job submit`."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import types
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from palign_ray.artifacts import StageDir
from palign_ray.config import load_config, stage_engine

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted((REPO / "jobs" / "configs").glob("*.yaml"))
VENV_BIN = Path(sys.executable).parent
# `jobs` is a top-level package of the repo, not of the installed palign_ray distribution.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


# --- configs and the entry point (no Ray) -----------------------------------------------------


def test_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {
        "default.yaml",
        "qwen32b_to_qwen7b_lora.yaml",
        "qwen32b_to_qwen3_8b_full.yaml",
        "s1k_ingest.yaml",
    } <= names


CPU_CONFIGS = {"default.yaml", "compare_mini.yaml"}  # runs on this box, not a cluster


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_job_config_loads_and_says_how_to_run_it(path):
    cfg = load_config(path)
    header = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    assert header, f"{path.name}: starts with a comment saying how to run it"
    assert "ray job submit --entrypoint-num-cpus=1" in "\n".join(
        header
    ) and f"--config jobs/configs/{path.name}" in "\n".join(header)
    if path.name not in CPU_CONFIGS:  # cluster configs: state on shared storage, GPUs
        assert cfg.run.run_dir.startswith("/mnt/shared/")
        assert cfg.sft.use_gpu and cfg.ray.num_gpus_per_actor == cfg.engine.tensor_parallel_size


def test_cluster_configs_match_the_brief():
    lora = load_config(REPO / "jobs/configs/qwen32b_to_qwen7b_lora.yaml")
    teacher_engine, teacher_pool = stage_engine(lora, "teacher")
    assert (
        teacher_engine.tensor_parallel_size,
        teacher_pool.num_gpus_per_actor,
        teacher_pool.num_actors,
    ) == (4, 4.0, 2)
    for cfg in (lora, load_config(REPO / "jobs/configs/qwen32b_to_qwen3_8b_full.yaml")):
        for stage in (
            "judge",
            "align",
            "eval",
        ):  # the 7B/8B student engines take one GPU each, 8 of them
            engine, pool = stage_engine(cfg, stage)
            assert (engine.tensor_parallel_size, pool.num_gpus_per_actor, pool.num_actors) == (
                1,
                1.0,
                8,
            ), stage
    assert lora.sft.model == "Qwen/Qwen2.5-7B-Instruct" and lora.sft.lora
    assert (lora.sft.lora_r, lora.sft.lora_alpha, lora.sft.epochs, lora.sft.learning_rate) == (
        16,
        16,
        3,
        5e-5,
    )
    assert lora.problems.path.startswith("/mnt/shared/")
    full = load_config(REPO / "jobs/configs/qwen32b_to_qwen3_8b_full.yaml")
    assert full.sft.model == "Qwen/Qwen3-8B" and not full.sft.lora
    assert (full.sft.zero_stage, full.sft.precision, full.sft.use_gpu) == (3, "bf16", True)
    s1k = load_config(REPO / "jobs/configs/s1k_ingest.yaml")
    assert (
        s1k.problems.trace_field == "deepseek_thinking_trajectory" and s1k.problems.source == "file"
    )


def test_stages_flag_is_the_palign_run_form():
    from jobs.distill import build_parser, stages_of

    args = build_parser().parse_args(
        ["--config", "c.yaml", "--stages", "problems,teacher", "run.seed=1"]
    )
    assert stages_of(args) == ["problems", "teacher"] and args.overrides == ["run.seed=1"]
    assert stages_of(build_parser().parse_args(["--config", "c.yaml"])) is None


def _distill(
    *argv: str, cwd: Path = REPO, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobs.distill", *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_unknown_override_key_exits_2_naming_it(tmp_path):
    run_dir = tmp_path / "run"
    r = _distill(
        "--config", "jobs/configs/default.yaml", "judge.thresold=0.3", f"run.run_dir={run_dir}"
    )
    assert r.returncode == 2, r.stderr
    assert "judge.thresold" in r.stderr and "unknown config key" in r.stderr
    assert not run_dir.exists(), "nothing may run before the config is accepted"


def test_unknown_key_in_config_file_exits_2_naming_it(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run:\n  run_dir: x\nsft:\n  lora_rank: 8\n")
    r = _distill("--config", str(bad))
    assert r.returncode == 2 and "sft.lora_rank" in r.stderr, r.stderr


def test_main_calls_the_pipeline_directly(monkeypatch, tmp_path, caplog):
    import jobs.distill as distill

    calls: list[tuple[object, object]] = []
    fake = types.ModuleType("palign_ray.pipeline")
    fake.PipelineError = RuntimeError  # type: ignore[attr-defined]
    fake.run_pipeline = lambda cfg, stages: (
        calls.append((cfg.run.run_dir, stages)) or {"problems": {}}
    )  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "palign_ray.pipeline", fake)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    rc = distill.main(
        ["--config", "jobs/configs/default.yaml", "--stages", "problems", f"run.run_dir={tmp_path}"]
    )
    assert rc == 0 and calls == [(str(tmp_path), ["problems"])]
    # On a cluster a relative run_dir would live in the job's temporary working dir: warn.
    joined: list[object] = []
    monkeypatch.setattr(distill, "join_cluster", joined.append)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    assert distill.main(["--config", "jobs/configs/default.yaml"]) == 0 and len(joined) == 1
    assert "run.run_dir='runs/default' is relative" in caplog.text


def test_compare_job_runs_every_method_and_refuses_an_unknown_one(monkeypatch, tmp_path, capsys):
    """`python -m jobs.compare`: the same config, cluster and exit-code handling as jobs.distill."""
    import jobs.compare as job

    calls: list[tuple[object, object, object]] = []
    fake = types.ModuleType("palign_ray.compare.run")
    fake.run_compare = lambda cfg, methods, stages: (  # type: ignore[attr-defined]
        calls.append((cfg.run.run_dir, methods, stages)) or {"report": "r.md"}
    )
    monkeypatch.setitem(sys.modules, "palign_ray.compare.run", fake)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    argv = ["--config", "jobs/configs/compare_mini.yaml", f"run.run_dir={tmp_path}"]
    assert job.main([*argv, "--methods", "full_cot,palign", "--stages", "problems"]) == 0
    assert calls == [(str(tmp_path), ["full_cot", "palign"], ["problems"])]
    monkeypatch.delitem(sys.modules, "palign_ray.compare.run")  # the real one: methods are checked
    assert job.main([*argv, "--methods", "full_cot,palgn"]) == 2
    assert "unknown method 'palgn'" in capsys.readouterr().err and not any(tmp_path.iterdir())


def test_main_rejects_bad_settings_before_any_stage(tmp_path):
    r = _distill(
        "--config", "jobs/configs/default.yaml", f"run.run_dir={tmp_path}", "judge.threshold=7"
    )
    assert (
        r.returncode == 2 and "judge.threshold" in r.stderr and not (tmp_path / "problems").exists()
    ), r.stderr


# --- a real `ray job submit` against a loopback head ------------------------------------------


def _free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (all held open at once so none repeats)."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


# Every port `ray start --head` would otherwise take at a fixed default (6379, 8265, 10001, 52365...)
# or pick itself: other developers run their own Ray on this machine.
_PORT_FLAGS = (
    "port",
    "dashboard-port",
    "ray-client-server-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "metrics-export-port",
    "runtime-env-agent-port",
    "node-manager-port",
    "object-manager-port",
)


@dataclass
class LocalHead:
    dashboard: str  # http://127.0.0.1:PORT, the job server
    gcs_port: int
    env: dict[str, str]  # for the `ray` CLI: token auth on, with this head's own token
    token: str

    def get(self, path: str) -> dict:
        req = urllib.request.Request(
            self.dashboard + path, headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())


def _wait_for_job_server(
    head: LocalHead, proc: subprocess.Popen, log_path: Path, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"ray start exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
            head.get("/api/jobs/")
            return
        time.sleep(0.5)
    pytest.fail(
        f"job server at {head.dashboard} not up after {timeout_s} s:\n{log_path.read_text()[-3000:]}"
    )


def _stop(proc: subprocess.Popen, marker: str) -> None:
    """End exactly the processes of this head: `ray start --block` and its descendants, by pid.

    `ray stop` is not used: it stops every Ray on the machine, other developers' included.
    """
    import psutil

    try:
        root = psutil.Process(proc.pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = []
    # Stragglers that escaped the tree still name this head's temp dir on their command line.
    for p in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if p not in procs and any(marker in a for a in (p.info["cmdline"] or [])):
                procs.append(p)
    if procs:
        with contextlib.suppress(psutil.Error):
            procs[0].terminate()  # --block shuts its Ray down on SIGTERM
        _, alive = psutil.wait_procs(procs, timeout=20)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive, timeout=10)


@contextlib.contextmanager
def local_ray_head(num_cpus: int = 2) -> Iterator[LocalHead]:
    # A short private temp dir: Ray's unix sockets live under it (path limit ~107 bytes).
    temp_dir = tempfile.mkdtemp(prefix="palign-rayjob-", dir="/tmp")
    ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True))
    token = secrets.token_hex(32)
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"
    }
    # RAY_AUTH_TOKEN (not ~/.ray/auth_token, which other Ray users here share) holds this head's token.
    env |= {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "RAY_USAGE_STATS_ENABLED": "0",
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    cmd = [
        str(VENV_BIN / "ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        f"--num-cpus={num_cpus}",
        "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
        *(f"--{k}={v}" for k, v in ports.items()),
    ]
    log_path = Path(temp_dir) / "ray-start.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    head = LocalHead(f"http://127.0.0.1:{ports['dashboard-port']}", ports["port"], env, token)
    try:
        _wait_for_job_server(head, proc, log_path, timeout_s=180)
        yield head
    finally:
        _stop(proc, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _submit(head: LocalHead, sid: str, *args: str, timeout: int) -> subprocess.CompletedProcess:
    """`ray job submit` of the default config, exactly as the README gives it, plus `args` for the job."""
    cmd = [
        str(VENV_BIN / "ray"),
        "job",
        "submit",
        "--address",
        head.dashboard,
        "--submission-id",
        sid,
        "--entrypoint-num-cpus=1",  # the driver's CPU, reserved (issue 29.5)
        "--working-dir",
        ".",
        "--runtime-env",
        "cluster/runtime_env.yaml",
        "--",
        "python",
        "-m",
        "jobs.distill",
        "--config",
        "jobs/configs/default.yaml",
        *args,
    ]
    return subprocess.run(
        cmd, cwd=REPO, env=head.env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.timeout(600)
def test_ray_job_submit_runs_the_problems_stage(tmp_path):
    run_dir = tmp_path / "run"
    sid = f"palign-test-{secrets.token_hex(4)}"
    with local_ray_head() as head:
        submit = _submit(head, sid, "--stages", "problems", f"run.run_dir={run_dir}", timeout=420)
        status = head.get(f"/api/jobs/{sid}")["status"]
        logs = head.get(f"/api/jobs/{sid}/logs")["logs"]
        # The same submission with a misspelled key fails fast, and `ray job submit` says so.
        bad = _submit(head, f"{sid}-bad", "judge.thresold=0.3", timeout=300)
        bad_status = head.get(f"/api/jobs/{sid}-bad")["status"]
        bad_logs = head.get(f"/api/jobs/{sid}-bad/logs")["logs"]
    assert bad.returncode != 0 and bad_status == "FAILED" and "judge.thresold" in bad_logs, (
        bad_logs[-2000:]
    )
    assert status == "SUCCEEDED", (
        f"{status}\n--- job logs ---\n{logs[-4000:]}\n--- submit ---\n{submit.stderr[-2000:]}"
    )
    assert submit.returncode == 0
    # The driver joined this head (RAY_ADDRESS set by the job server), not a Ray of its own.
    assert f"joined Ray cluster at 127.0.0.1:{head.gcs_port}: 1 node(s)" in logs, logs[-3000:]
    # The run directory (on "shared storage": outside the job's temporary working dir).
    stage = StageDir(run_dir / "problems")
    manifest = json.loads(stage.manifest_path.read_text())
    cfg = load_config(REPO / "jobs/configs/default.yaml")
    out, quarantined = stage.output_rows(), stage.quarantine_rows()
    assert len(out) > 0 and len(out) + len(quarantined) == cfg.problems.num_problems
    assert manifest["num_output"] == len(out) and manifest["num_quarantined"] == len(quarantined)
    assert sorted(p.name for p in run_dir.iterdir() if p.is_dir()) == ["problems"], (
        "only the requested stage ran"
    )
