"""The streaming HF export: safetensors layout, tied weights, shards + index, LoRA merged like peft merges."""

from __future__ import annotations

import copy
import json
import struct

import pytest

from palign_ray.sft import export as X


def _entry(
    name: str, shape: tuple[int, ...], dtype: str = "bfloat16", itemsize: int = 2
) -> X.Entry:
    return X.Entry(name, shape, dtype, itemsize, source=None)


def test_shards_respect_the_size_limit_and_keep_order():
    entries = [_entry(f"t{i}", (10, 10)) for i in range(7)]  # 200 bytes each
    shards = X.shard_entries(entries, 450)
    assert [[e.name for e in s] for s in shards] == [
        ["t0", "t1"],
        ["t2", "t3"],
        ["t4", "t5"],
        ["t6"],
    ]
    big = X.shard_entries(
        [_entry("small", (2,)), _entry("huge", (1000,)), _entry("tail", (2,))], 100
    )
    assert [[e.name for e in s] for s in big] == [
        ["small"],
        ["huge"],
        ["tail"],
    ]  # an oversized tensor alone
    assert X.shard_names(1) == ["model.safetensors"]
    assert X.shard_names(3)[1] == "model-00002-of-00003.safetensors"
    with pytest.raises(ValueError, match="max_shard_bytes"):
        X.shard_entries(entries, 0)


def test_header_is_aligned_and_offsets_are_contiguous():
    entries = [_entry("a", (3,)), _entry("b", (2, 5), "float32", 4)]
    raw = X.safetensors_header(entries)
    (n,) = struct.unpack("<Q", raw[:8])
    assert n == len(raw) - 8 and n % 8 == 0
    header = json.loads(raw[8:])
    assert header["__metadata__"] == {"format": "pt"}
    assert header["a"] == {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}
    assert header["b"] == {"dtype": "F32", "shape": [2, 5], "data_offsets": [6, 46]}
    with pytest.raises(ValueError, match="no safetensors code"):
        X.safetensors_header([_entry("c", (1,), "complex64", 8)])


def _tiny(tiny_model: str, dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model, dtype=dtype)


def test_export_writes_loadable_shards_equal_to_the_model(tiny_model, tmp_path):
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    model = _tiny(tiny_model, torch.bfloat16)
    assert model.config.tie_word_embeddings
    layout = X.write_hf_weights(
        model, tmp_path, export_dtype=torch.bfloat16, max_shard_bytes=2 << 20, writer=True
    )
    X.write_hf_config(model, tmp_path, torch.bfloat16)
    assert len(layout["files"]) > 1 and (tmp_path / X.INDEX_FILE).is_file()
    index = json.loads((tmp_path / X.INDEX_FILE).read_text())
    assert (
        "lm_head.weight" not in index["weight_map"]
    )  # tied to embed_tokens: written once, as HF does
    assert index["metadata"]["total_size"] == layout["total_bytes"]
    for f in layout["files"]:  # every file parses with the reference reader
        with safe_open(str(tmp_path / f), "pt") as fh:
            assert fh.metadata() == {"format": "pt"} and list(fh.keys())
    again = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    want = model.state_dict()
    got = again.state_dict()
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert json.loads((tmp_path / "config.json").read_text())["use_cache"] is True


def test_export_casts_to_the_export_dtype(tiny_model, tmp_path):
    import torch
    from safetensors.torch import load_file

    model = _tiny(tiny_model, torch.float32)
    X.write_hf_weights(
        model, tmp_path, export_dtype=torch.bfloat16, max_shard_bytes=1 << 30, writer=True
    )
    got = load_file(str(tmp_path / X.SINGLE_FILE))
    name = "model.layers.0.mlp.up_proj.weight"
    assert got[name].dtype == torch.bfloat16
    assert torch.equal(got[name], model.state_dict()[name].to(torch.bfloat16))


def test_lora_export_equals_peft_merge(tiny_model, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file

    torch.manual_seed(0)
    base = _tiny(tiny_model, torch.bfloat16)
    model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"])
    )
    for n, p in model.named_parameters():
        if "lora_B" in n:  # peft starts B at zero (delta 0); give the adapters something to merge
            p.data.normal_(0, 0.05)
    want = copy.deepcopy(model).merge_and_unload().state_dict()
    X.write_hf_weights(
        model, tmp_path, export_dtype=torch.bfloat16, max_shard_bytes=1 << 30, writer=True
    )
    got = load_file(str(tmp_path / X.SINGLE_FILE))
    assert set(got) == set(want) - {"lm_head.weight"}  # plain HF names, no base_layer/lora_ keys
    merged = [k for k in got if "q_proj" in k or "down_proj" in k]
    assert merged and all(
        torch.equal(got[k], want[k]) for k in got
    )  # bit-identical to peft's own merge
    plain = _tiny(tiny_model, torch.bfloat16).state_dict()
    assert all(not torch.equal(got[k], plain[k]) for k in merged if k.endswith("weight"))
