"""Model resolution: embedded default converted once (cached), user paths checked, no downloads."""

import json
from pathlib import Path

import pytest

from palign_ray.models import check_model_dir, default_model_path, resolve_model


def test_default_model_is_converted_safetensors_with_chat_template(default_model):
    d = Path(default_model)
    assert (d / "model.safetensors").is_file()
    tok_cfg = json.loads((d / "tokenizer_config.json").read_text())
    has_template = "chat_template" in tok_cfg or (d / "chat_template.jinja").is_file()
    assert has_template
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in cfg


def test_default_model_is_cached(default_model):
    before = (Path(default_model) / "model.safetensors").stat().st_mtime_ns
    assert resolve_model("default") == default_model
    assert str(default_model_path()) == default_model
    assert (Path(default_model) / "model.safetensors").stat().st_mtime_ns == before


def test_concurrent_first_conversion_happens_once(tmp_path, monkeypatch):
    """Two processes racing on an empty cache: one converts, the other waits and reuses it."""
    import subprocess
    import sys

    monkeypatch.setenv("PALIGN_CACHE_DIR", str(tmp_path))
    code = (
        "import palign_ray.models as m\n"
        "orig = m._convert_default\n"
        "def counted(out):\n"
        "    open(out.parent / 'conversions.log', 'a').write('x')\n"
        "    orig(out)\n"
        "m._convert_default = counted\n"
        "print(m.default_model_path())\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300)[0].strip().splitlines()[-1] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1]
    assert (tmp_path / "models" / "conversions.log").read_text() == "x"


def test_user_dir_without_safetensors_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(FileNotFoundError, match="pickle weights"):
        check_model_dir(tmp_path)


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="no downloads"):
        resolve_model("someorg/some-model-that-is-not-cached")


def test_tiny_model_has_supported_head_dim(tiny_model):
    cfg = json.loads((Path(tiny_model) / "config.json").read_text())
    assert cfg["head_dim"] == 64 and cfg["num_hidden_layers"] == 2
