"""Security defaults: no remote code unless asked, safetensors only, no shell interpolation, strict job config."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import pytest

from palign_ray.config import Config, EngineConfig, load_config

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- trust_remote_code


class RecordingLLM:
    """Stands in for vllm.LLM: records the constructor kwargs, starts nothing."""

    calls: list[dict] = []

    def __init__(self, **kwargs: object) -> None:
        RecordingLLM.calls.append(kwargs)

    def get_tokenizer(self) -> object:
        return object()


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> type[RecordingLLM]:
    RecordingLLM.calls = []
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=RecordingLLM))
    # VLLMEngine sets these with setdefault; registering them here restores the environment afterwards.
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    return RecordingLLM


def test_trust_remote_code_is_off_by_default_everywhere() -> None:
    assert EngineConfig().trust_remote_code is False
    assert Config().engine.trust_remote_code is False
    for yml in sorted((REPO / "jobs" / "configs").glob("*.yaml")):
        assert load_config(str(yml), []).engine.trust_remote_code is False, yml.name


def test_vllm_engine_passes_trust_remote_code_through(fake_vllm: type[RecordingLLM]) -> None:
    from palign_ray.engines.vllm_engine import VLLMEngine

    VLLMEngine("/models/x", EngineConfig())
    VLLMEngine("/models/x", load_config(None, ["engine.trust_remote_code=true"]).engine)
    assert [c["trust_remote_code"] for c in fake_vllm.calls] == [False, True]
    assert fake_vllm.calls[0]["model"] == "/models/x"


# --------------------------------------------------------------------------- safetensors only


def _model_dir(root: Path, name: str, weights: tuple[str, ...]) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    for w in weights:
        (d / w).write_bytes(b"\x80\x04not really weights")
    return d


def test_pickle_only_model_dirs_are_refused(tmp_path: Path) -> None:
    from palign_ray.models import check_model_dir, resolve_model

    for name, weights in (("bin", ("pytorch_model.bin",)), ("pt", ("model.pt",)), ("none", ())):
        d = _model_dir(tmp_path, name, weights)
        with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors weights") as exc:
            resolve_model(str(d))
        if weights:
            assert weights[0] in str(exc.value)  # names the pickle file it refused
    ok = _model_dir(tmp_path, "ok", ("model.safetensors",))
    assert check_model_dir(ok) == ok


def test_hub_cache_lookup_never_fetches_pickle_files() -> None:
    """The HF-cache branch of resolve_model only lists safetensors/config/tokenizer patterns."""
    src = (REPO / "palign_ray" / "models.py").read_text()
    patterns = re.search(r"allow_patterns=\[([^\]]*)\]", src)
    assert patterns is not None
    assert "safetensors" in patterns.group(1)
    assert (
        ".bin" not in patterns.group(1)
        and ".pt" not in patterns.group(1)
        and '*"' not in patterns.group(1)
    )
    assert "local_files_only=True" in src


# --------------------------------------------------------------------------- no shell interpolation


def test_package_never_uses_a_shell() -> None:
    offenders = []
    for py in sorted([*(REPO / "palign_ray").rglob("*.py"), *(REPO / "jobs").rglob("*.py")]):
        for n, line in enumerate(py.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(
                r"shell\s*=\s*True|os\.system\(|os\.popen\(|commands\.getoutput|pty\.spawn", code
            ):
                offenders.append(f"{py.relative_to(REPO)}:{n}: {line.strip()}")
    assert not offenders, offenders


SHELLY = "$(touch pwned)`touch pwned2`;touch pwned3"


def test_paths_with_shell_syntax_are_used_literally(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import pyarrow.parquet as pq

    from palign_ray.cli import main
    from palign_ray.models import resolve_model

    monkeypatch.chdir(tmp_path)
    weird = tmp_path / SHELLY
    weird.mkdir()
    src = weird / "in $(touch pwned4).jsonl"
    src.write_text(
        json.dumps(
            {
                "id": "a",
                "question": "What is 1+1?",
                "cot": "One and one. That is two.",
                "answer": "2",
            }
        )
        + "\n"
    )
    out = weird / "out `touch pwned5`.parquet"
    assert (
        main(
            [
                "truncate",
                "--input",
                str(src),
                "--output",
                str(out),
                "--id-field",
                "id",
                "judge.search=fixed_ratio",
            ]
        )
        == 0
    )
    assert [r["problem_id"] for r in pq.read_table(out).to_pylist()] == ["a"]
    model = _model_dir(weird, "model $(touch pwned6)", ("model.safetensors",))
    assert resolve_model(str(model)) == str(model.resolve())
    with pytest.raises(FileNotFoundError, match=re.escape("$(touch pwned7)")):
        resolve_model(str(weird / "$(touch pwned7)"))
    created = sorted(p.name for p in tmp_path.rglob("pwned*"))
    assert created == [], created


# --------------------------------------------------------------------------- the job entry point


def test_job_entry_point_refuses_an_unknown_config_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from jobs.distill import main

    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"run:\n  run_dir: {tmp_path / 'run'}\n  chunk_sise: 4\n")
    assert main(["--config", str(cfg)]) == 2
    assert "run.chunk_sise" in capsys.readouterr().err
    ok = tmp_path / "ok.yaml"
    ok.write_text(f"run:\n  run_dir: {tmp_path / 'run'}\n")
    assert main(["--config", str(ok), "judge.no_such_key=1"]) == 2
    assert "judge.no_such_key" in capsys.readouterr().err
    assert main(["--config", str(ok), "engine.trust_remote_code=maybe"]) == 2
    assert "engine.trust_remote_code" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before anything ran
