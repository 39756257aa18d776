"""One-GPU check of SFT memory at long sequences: a 7B-shaped student, LoRA, gradient checkpointing, one step.

Design (issue 29.6, fixed before any run): a randomly initialised model with Qwen2.5-7B's dimensions
(hidden 3584, 28 layers, 28 heads / 4 KV heads, MLP 18944, vocabulary 152,064) built in bf16 on the
device (no download, no weights file), LoRA r16 on every projection, gradient checkpointing. For each
packed length (8k and 16k tokens, the second half labelled) and each loss path (`sft.loss_chunk_tokens`
0 = full logits, 1024 = chunked), one forward + backward: `torch.cuda.max_memory_allocated`, step time
and tokens/s; an out-of-memory step is recorded as such. Also the facts a first run needs: GPU,
NVIDIA driver, torch and its CUDA.

Run on a CUDA host with torch + transformers, carrying the wheel peft (pure Python; its deps accelerate,
huggingface_hub, safetensors, psutil come with transformers or are small):
    PYTHONPATH=. python bench/gpu_long_seq_check.py --out bench/results/<date>-<gpu>-long-seq.json
On CPU at a tiny shape (what tests/test_gpu_sft_check.py runs):
    PYTHONPATH=. python bench/gpu_long_seq_check.py --shape tiny --lengths 64,128 --device cpu --out r.json
No ray, vllm or pyarrow is imported, and deepspeed is not needed. Budget: a few minutes on one H100 (8 steps).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from palign_ray.sft import data as D  # noqa: E402 - after the path setup above
from palign_ray.sft.core import micro_loss  # noqa: E402

log = logging.getLogger("gpu_long_seq_check")
MIB = 2**20

SHAPES: dict[str, dict[str, Any]] = {
    # Qwen2.5-7B's config.json dimensions
    "qwen7b": {
        "vocab_size": 152064,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": False,
    },
    "tiny": {
        "vocab_size": 4096,
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 4096,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
    },
}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build_model(shape: str, device: Any, lora_r: int) -> Any:
    """The shape's random model, bf16 on `device`, LoRA-wrapped, gradient checkpointing on."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    conf = Qwen2Config(**SHAPES[shape])
    with device:  # built where it trains: a 7B model never exists in host memory
        model = Qwen2ForCausalLM(conf).to(torch.bfloat16)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    lora = LoraConfig(r=lora_r, lora_alpha=2 * lora_r, target_modules=LORA_TARGETS)
    model = get_peft_model(model, lora)
    model.train()
    return model


def one_step(model: Any, length: int, chunk: int, device: Any) -> dict[str, Any]:
    import torch

    on_gpu = device.type == "cuda"
    vocab = model.get_base_model().config.vocab_size
    g = torch.Generator().manual_seed(length)
    ids = torch.randint(10, vocab, (1, length), generator=g).tolist()
    labels = [[D.IGNORE_INDEX] * (length // 2) + ids[0][length // 2 :]]
    batch = {"input_ids": ids, "labels": labels, "position_ids": [list(range(length))]}
    model.zero_grad(set_to_none=True)
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    row: dict[str, Any] = {"tokens": length, "loss_chunk_tokens": chunk}
    t0 = time.perf_counter()
    try:
        loss, value = micro_loss(model, batch, device, chunk)
        loss.backward()
        if on_gpu:
            torch.cuda.synchronize()
    except torch.OutOfMemoryError as e:
        row.update(oom=True, error=str(e).splitlines()[0][:300])
    else:
        secs = time.perf_counter() - t0
        row.update(oom=False, loss=round(value / (length - length // 2), 4), step_s=round(secs, 3))
        row["tokens_per_s"] = round(length / secs, 1)
    if on_gpu:
        row["max_memory_allocated_mib"] = round(torch.cuda.max_memory_allocated() / MIB, 1)
    model.zero_grad(set_to_none=True)
    return row


def facts(device: Any) -> dict[str, Any]:
    import torch
    import transformers

    out: dict[str, Any] = {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "transformers": transformers.__version__,
    }
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(0)
        out["gpu_memory_mib"] = round(torch.cuda.get_device_properties(0).total_memory / MIB)
        try:
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            out["nvidia_driver"] = smi.stdout.strip().splitlines()[0] if smi.stdout else None
        except (OSError, subprocess.TimeoutExpired):
            out["nvidia_driver"] = None
    return out


def run_check(
    shape: str, lengths: list[int], chunks: list[int], device_name: str, lora_r: int
) -> dict[str, Any]:
    import torch

    device = torch.device(device_name)
    model = build_model(shape, device, lora_r)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    res: dict[str, Any] = {
        "shape": shape,
        "dims": SHAPES[shape],
        "lora_r": lora_r,
        "trainable_params": trainable,
        "params": sum(p.numel() for p in model.parameters()),
        "device": device_name,
        **facts(device),
        "steps": [],
    }
    for length in lengths:
        for chunk in chunks:
            row = one_step(model, length, chunk, device)
            log.info("%s", json.dumps(row))
            res["steps"].append(row)
    ok = [r for r in res["steps"] if not r["oom"]]
    res["ok"] = bool(ok) and all(r["loss"] == r["loss"] for r in ok)  # finite where it ran
    return res


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="qwen7b")
    ap.add_argument("--lengths", default="8192,16384", help="packed lengths, comma-separated")
    ap.add_argument("--chunks", default="0,1024", help="sft.loss_chunk_tokens values (0 = full)")
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    res = run_check(
        args.shape,
        [int(x) for x in args.lengths.split(",")],
        [int(x) for x in args.chunks.split(",")],
        args.device,
        args.lora_r,
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    log.info("%s: %s", "OK" if res["ok"] else "FAILED", args.out)
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
