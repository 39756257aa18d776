"""GPU check of SFT packing: packed == unpacked per-token loss on CUDA, and packed vs padded training speed.

Run as (on a CUDA host with torch + transformers; no vllm/ray/deepspeed needed):
    PYTHONPATH=. python bench/gpu_sft_packing.py --out results.json
Uses palign_ray.sft.data (pack/collate, pure) with a randomly initialised SmolLM2-135M-shaped Llama.
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

from palign_ray.sft.data import IGNORE_INDEX, Example, collate, pack, padding_share


def smollm2_shape(vocab: int = 49152) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        rope_theta=100000.0,
    )


def make_examples(n: int, rng: random.Random, vocab: int, lo: int, hi: int) -> list[Example]:
    out = []
    for i in range(n):
        length = rng.randint(lo, hi)
        prompt = rng.randint(4, max(5, length // 3))
        ids = tuple(rng.randrange(10, vocab) for _ in range(length))
        mask = tuple([0] * prompt + [1] * (length - prompt))
        out.append(Example(f"p{i}", ids, mask))
    return out


def per_token_losses(model, batch: dict, device) -> torch.Tensor:
    # use_cache=False: with a KV cache transformers skips packed-sequence (position-id reset) detection.
    ids = torch.tensor(batch["input_ids"], device=device)
    labels = torch.tensor(batch["labels"], device=device)
    pos = torch.tensor(batch["position_ids"], device=device)
    logits = model(input_ids=ids, position_ids=pos, use_cache=False).logits.float()
    lp = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)),
        labels[:, 1:].reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    )
    return lp[labels[:, 1:].reshape(-1) != IGNORE_INDEX]


def equivalence(attn: str, dtype: torch.dtype, device) -> dict:
    torch.manual_seed(0)
    cfg = smollm2_shape()
    cfg._attn_implementation = attn
    model = LlamaForCausalLM(cfg).to(device=device, dtype=dtype).eval()
    rng = random.Random(0)
    exs = make_examples(12, rng, cfg.vocab_size, 20, 200)
    seqs = pack([e.num_tokens for e in exs], list(range(len(exs))), 512, True)
    with torch.no_grad():
        packed = torch.cat(
            [per_token_losses(model, collate((tuple(s),), exs, 0), device) for s in seqs]
        )
        order = [i for s in seqs for i in s]
        single = torch.cat(
            [per_token_losses(model, collate(((i,),), exs, 0), device) for i in order]
        )
    diff = (packed - single).abs()
    return {
        "attn": attn,
        "dtype": str(dtype),
        "num_sequences": len(seqs),
        "num_examples": len(exs),
        "num_loss_tokens": int(packed.numel()),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "mean_loss": float(single.mean()),
    }


def throughput(packing: bool, device, steps: int, micro_batch: int, max_len: int) -> dict:
    torch.manual_seed(0)
    cfg = smollm2_shape()
    cfg._attn_implementation = "sdpa"
    model = LlamaForCausalLM(cfg).to(device=device, dtype=torch.bfloat16).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    rng = random.Random(1)
    exs = make_examples(2048, rng, cfg.vocab_size, 64, 900)
    lengths = [e.num_tokens for e in exs]
    seqs = pack(lengths, list(range(len(exs))), max_len, packing)
    batches = [
        tuple(tuple(s) for s in seqs[i : i + micro_batch]) for i in range(0, len(seqs), micro_batch)
    ][: steps + 3]
    real = total = 0
    for k, b in enumerate(batches):
        if k == 3:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            real = total = 0
        batch = collate(b, exs, 0)
        ids = torch.tensor(batch["input_ids"], device=device)
        labels = torch.tensor(batch["labels"], device=device)
        pos = torch.tensor(batch["position_ids"], device=device)
        loss = model(input_ids=ids, position_ids=pos, labels=labels, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        real += batch["num_tokens"]
        total += batch["num_tokens"] + batch["num_pad_tokens"]
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    n = len(batches) - 3
    return {
        "packing": packing,
        "steps": n,
        "micro_batch": micro_batch,
        "max_len": max_len,
        "step_time_s": dt / n,
        "real_tokens_per_s": real / dt,
        "padded_tokens_per_s": total / dt,
        "padding_share": padding_share(lengths, seqs, micro_batch),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="gpu_sft_packing.json")
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    device = torch.device("cuda")
    res: dict = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "gpu": torch.cuda.get_device_name(0),
        "equivalence": [],
        "throughput": [],
    }
    for attn in ("sdpa", "eager"):
        for dtype in (torch.float32, torch.bfloat16):
            try:
                res["equivalence"].append(equivalence(attn, dtype, device))
            except Exception as e:  # noqa: BLE001 - report, keep going
                res["equivalence"].append(
                    {"attn": attn, "dtype": str(dtype), "error": repr(e)[:500]}
                )
            print(json.dumps(res["equivalence"][-1]), flush=True)
    for packing in (True, False):
        res["throughput"].append(
            throughput(packing, device, args.steps, micro_batch=4, max_len=2048)
        )
        print(json.dumps(res["throughput"][-1]), flush=True)
    with open(args.out, "w") as fh:
        json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
