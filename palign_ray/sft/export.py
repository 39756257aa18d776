"""HF safetensors export straight from the live training module, one tensor at a time.

Bounded memory on the writing rank: each tensor is gathered (ZeRO-3: all ranks take part), merged with
its LoRA delta when it has one, cast to the export dtype and written into its safetensors file before
the next one is touched, so the host holds one tensor, never a whole state dict (zero_to_fp32 built a
full fp32 copy and the old export loaded the model again on top of it). The files are written from a
plan made beforehand (names, shapes, dtypes, shard of each tensor), which fixes every safetensors
header before the first byte of data.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import struct
from pathlib import Path
from typing import Any

# torch dtype name → safetensors dtype code (https://github.com/huggingface/safetensors, format spec)
SAFETENSORS_DTYPES = {
    "bfloat16": "BF16",
    "float16": "F16",
    "float32": "F32",
    "float64": "F64",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PEFT_PREFIX = "base_model.model."


@dataclasses.dataclass(frozen=True)
class Entry:
    """One tensor of the exported model: its HF name, shape, dtype name, and where its values come from."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # torch dtype name without "torch.", e.g. "bfloat16"
    itemsize: int
    source: Any = dataclasses.field(
        compare=False
    )  # a Parameter/buffer, or a peft LoRA layer (merged weight)
    lora: bool = False

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * self.itemsize


# ---------------------------------------------------------------- pure layout


def shard_entries(entries: list[Entry], max_shard_bytes: int) -> list[list[Entry]]:
    """Consecutive entries into files of at most max_shard_bytes (a larger tensor gets a file of its own)."""
    if max_shard_bytes < 1:
        raise ValueError(f"max_shard_bytes={max_shard_bytes} must be >= 1")
    shards: list[list[Entry]] = []
    size = 0
    for e in entries:
        if not shards or size + e.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += e.nbytes
    return shards


def shard_names(num_shards: int) -> list[str]:
    """HF's file names: one `model.safetensors`, or `model-0000i-of-0000n.safetensors` plus an index."""
    if num_shards == 1:
        return [SINGLE_FILE]
    return [f"model-{i:05d}-of-{num_shards:05d}.safetensors" for i in range(1, num_shards + 1)]


def safetensors_header(entries: list[Entry]) -> bytes:
    """The 8-byte length + JSON header of a safetensors file holding `entries` in this order.

    `format: pt` is what transformers checks before it loads a file; the JSON is padded with spaces to a
    multiple of 8 bytes so that the tensor data after it is aligned.
    """
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for e in entries:
        if e.dtype not in SAFETENSORS_DTYPES:
            raise ValueError(f"{e.name}: dtype {e.dtype} has no safetensors code")
        header[e.name] = {
            "dtype": SAFETENSORS_DTYPES[e.dtype],
            "shape": list(e.shape),
            "data_offsets": [offset, offset + e.nbytes],
        }
        offset += e.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def index_json(shards: list[list[Entry]], names: list[str]) -> dict[str, Any]:
    return {
        "metadata": {"total_size": sum(e.nbytes for s in shards for e in s)},
        "weight_map": {e.name: n for s, n in zip(shards, names, strict=True) for e in s},
    }


# ---------------------------------------------------------------- the plan (module structure only)


def _hf_model(module: Any) -> Any:
    """The transformers model inside a peft wrapper (LoRA layers stay in place inside it)."""
    return module.get_base_model() if hasattr(module, "get_base_model") else module


def _lora_layer_type() -> Any:
    """peft's LoraLayer class, or None without peft."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return None
    return LoraLayer


def _out_dtype(t: Any, export_dtype: Any) -> Any:
    return export_dtype if t.is_floating_point() else t.dtype


def plan_export(module: Any, export_dtype: Any) -> list[Entry]:
    """Every parameter and persistent buffer under its HF name; a LoRA layer becomes its merged base weights.

    Tied weights (lm_head = embed_tokens) are the same Parameter object and are written once, as HF does.
    """
    import torch

    lora_type = _lora_layer_type()
    seen: set[int] = set()
    entries: list[Entry] = []

    def add(name: str, t: Any, source: Any, lora: bool = False) -> None:
        if id(t) in seen:
            return
        seen.add(id(t))
        dtype = _out_dtype(t, export_dtype)
        shape = tuple(getattr(t, "ds_shape", t.shape))  # ZeRO-3 keeps the full shape in ds_shape
        entries.append(
            Entry(
                name,
                shape,
                str(dtype).removeprefix("torch."),
                torch.empty((), dtype=dtype).element_size(),
                source,
                lora,
            )
        )

    def walk(mod: Any, prefix: str) -> None:
        if lora_type is not None and isinstance(mod, lora_type):
            _check_lora_layer(mod, prefix)
            base = mod.get_base_layer()
            for n, p in base.named_parameters(recurse=False):
                add(prefix + n, p, mod if n == "weight" else p, lora=n == "weight")
            return
        for n, p in mod.named_parameters(recurse=False):
            add(prefix + n, p, p)
        for n, b in mod.named_buffers(recurse=False):
            if b is not None and n not in mod._non_persistent_buffers_set:
                add(prefix + n, b, b)
        for n, child in mod.named_children():
            walk(child, f"{prefix}{n}.")

    walk(_hf_model(module), "")
    return entries


def _check_lora_layer(mod: Any, name: str) -> None:
    for adapter in mod.active_adapters:
        if mod.use_dora.get(adapter, False):
            raise ValueError(
                f"{name}: DoRA adapters are not supported by the export (plain LoRA only)"
            )
    if not hasattr(mod.get_base_layer(), "weight"):
        raise ValueError(
            f"{name}: LoRA on a layer without a weight ({type(mod.get_base_layer()).__name__})"
        )


# ---------------------------------------------------------------- writing


def _gathered(params: list[Any]) -> Any:
    """ZeRO-3: the full values of `params` on every rank for the duration (a no-op for ordinary tensors)."""
    import contextlib

    if not any(hasattr(p, "ds_id") for p in params):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def _values(entry: Entry, export_dtype: Any) -> Any:
    """The entry's tensor on the host in its export dtype (call inside _gathered)."""
    import torch

    if not entry.lora:
        t = entry.source.data
        return t.detach().to(device="cpu", dtype=_out_dtype(t, export_dtype))
    layer = entry.source
    merged = layer.get_base_layer().weight.detach()
    with torch.no_grad():
        if not layer.merged:  # peft already folded the adapters in when merged
            for adapter in layer.active_adapters:
                if adapter in layer.lora_A:
                    # Rounded once to the export dtype, as peft's in-place merge rounds (the delta is
                    # bf16 when DeepSpeed trains in bf16, fp32 where peft keeps adapters in fp32).
                    merged = merged + layer.get_delta_weight(adapter)
        return merged.to(device="cpu", dtype=export_dtype)


def _params_of(entry: Entry) -> list[Any]:
    return list(entry.source.parameters()) if entry.lora else [entry.source]


def _write_tensor(fh: Any, t: Any, entry: Entry) -> None:
    import torch

    assert tuple(t.shape) == entry.shape, (
        f"{entry.name}: planned shape {entry.shape}, got {tuple(t.shape)}"
    )
    # The raw bytes through the buffer protocol: no bytes copy of the tensor (safetensors' save_file makes one).
    fh.write(t.contiguous().reshape(-1).view(torch.uint8).numpy())


def write_hf_weights(
    module: Any, out_dir: Path, *, export_dtype: Any, max_shard_bytes: int, writer: bool
) -> dict[str, Any]:
    """Write the module's weights as HF safetensors files into `out_dir` (only where `writer` is true).

    Under ZeRO-3 every rank must call this (each tensor is gathered collectively, in the same order on
    all ranks); otherwise the other ranks may skip it. Returns the layout (files, tensors, bytes).
    """
    entries = plan_export(module, export_dtype)
    shards = shard_entries(entries, max_shard_bytes)
    names = shard_names(len(shards))
    collective = any(hasattr(p, "ds_id") for p in module.parameters())
    if writer:
        out_dir.mkdir(parents=True, exist_ok=True)
    elif not collective:
        return {}
    for shard, fname in zip(shards, names, strict=True):
        fh = open(out_dir / fname, "wb") if writer else None  # noqa: SIM115 - closed below
        try:
            if fh:
                fh.write(safetensors_header(shard))
            for e in shard:
                with _gathered(_params_of(e)):
                    if fh:
                        _write_tensor(fh, _values(e, export_dtype), e)
        finally:
            if fh:
                fh.close()
    if writer and len(shards) > 1:
        (out_dir / INDEX_FILE).write_text(json.dumps(index_json(shards, names), indent=1))
    return {
        "files": names,
        "num_tensors": len(entries),
        "total_bytes": sum(e.nbytes for e in entries),
    }


def write_hf_config(module: Any, out_dir: Path, export_dtype: Any) -> None:
    """config.json (+ generation_config.json) of the exported model: the base model's, in the export dtype."""
    base = _hf_model(module)
    conf = copy.deepcopy(base.config)
    conf.use_cache = True
    conf.dtype = export_dtype
    conf.save_pretrained(out_dir)
    gen = getattr(base, "generation_config", None)
    if gen is not None:
        gen.save_pretrained(out_dir)
