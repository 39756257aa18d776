"""GPU check of the SFT core on one device: packed batches, the loss, DeepSpeed ZeRO-2 and ZeRO-3 (partitioned
load) in bf16 on one nccl rank, the streamed 16-bit export, and a reload of the export that generates.

Run as (on a CUDA host with torch + transformers; bring the small wheels deepspeed==0.19.8 and
accelerate==1.15.0 with their pure-Python deps hjson, ninja, py-cpuinfo, pydantic, psutil, msgpack, einops;
no ray, vllm or pyarrow needed):
    PYTHONPATH=. python bench/gpu_sft_check.py              # writes bench/results/<date>-<gpu>.json
    PYTHONPATH=. python bench/gpu_sft_check.py --device cpu --precision fp32 --model DIR --out r.json  # gloo
Without --model it trains a randomly initialised SmolLM2-135M-shaped Llama (no download, no tokenizer).
Budget: well under 15 minutes on one H100/H200 (two short trainings, two exports, two reloads).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import random
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from palign_ray.config import SFTConfig  # noqa: E402 - after the path setup above
from palign_ray.sft import core  # noqa: E402
from palign_ray.sft import data as D  # noqa: E402
from palign_ray.sft import export as X  # noqa: E402
from palign_ray.sft.memory import MIB, peak_rss_during  # noqa: E402

log = logging.getLogger("gpu_sft_check")
RESULTS = Path(__file__).resolve().parent / "results"


def init_one_rank(backend: str) -> None:
    """A one-process torch.distributed group (DeepSpeed needs one even for a single rank)."""
    import deepspeed

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0"
    )
    if backend == "gloo":
        core.skip_shm_op_build()
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)


def random_smollm2(out: Path) -> str:
    """A random-weight SmolLM2-135M-shaped Llama saved as bf16 safetensors (the check needs shapes, not skill)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    conf = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        rope_theta=100000.0,
        bos_token_id=1,
        eos_token_id=2,
    )
    LlamaForCausalLM(conf).to(torch.bfloat16).save_pretrained(out)
    return str(out)


def make_examples(n: int, vocab: int, rng: random.Random, lo: int, hi: int) -> list[D.Example]:
    """Random token sequences with a prompt part (masked out of the loss) and a response part."""
    out = []
    for i in range(n):
        length = rng.randint(lo, hi)
        prompt = rng.randint(2, max(3, length // 3))
        ids = tuple(rng.randrange(10, vocab) for _ in range(length))
        out.append(D.Example(f"p{i}", ids, tuple([0] * prompt + [1] * (length - prompt))))
    return out


def train(
    cfg: SFTConfig, model_path: str, examples: list[D.Example], device: Any
) -> tuple[Any, dict[str, Any]]:
    """A few packed optimizer steps of the SFT core; the same examples every epoch, so the loss must fall."""
    import torch

    plans = [
        D.plan_epoch(
            [e.num_tokens for e in examples],
            0,
            ep,
            cfg.max_seq_len,
            cfg.packing,
            1,
            cfg.micro_batch_size,
            cfg.grad_accum_steps,
        )
        for ep in range(cfg.epochs)
    ]
    steps = [s for p in plans for s in p.steps][: cfg.max_steps or None]
    on_gpu = device.type == "cuda"
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    engine, load = core.build_engine(cfg, model_path, 1, on_gpu, len(steps))
    gpu_after_load = torch.cuda.max_memory_allocated() / MIB if on_gpu else 0.0
    hist = []
    for plan_step in steps:
        t0 = time.perf_counter()
        loss_sum, n_tok, n_pad = core.run_step(
            engine,
            plan_step,
            examples,
            rank=0,
            world=1,
            grad_accum_steps=cfg.grad_accum_steps,
            pad_id=0,
            device=device,
        )
        if on_gpu:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        hist.append(
            {
                "loss": loss_sum / max(1, D.step_loss_tokens(plan_step, examples)),
                "step_time_s": round(dt, 4),
                "tokens_per_s": round(n_tok / dt, 1),
                "num_pad_tokens": n_pad,
            }
        )
    out = {
        "zero_stage": cfg.zero_stage,
        "load": load,
        "gpu_peak_after_load_mb": round(gpu_after_load, 1),
        "gpu_peak_mb": round(torch.cuda.max_memory_allocated() / MIB, 1) if on_gpu else 0.0,
        "steps": hist,
        "loss_fell": hist[-1]["loss"] < hist[0]["loss"],
    }
    return engine, out


def export_and_reload(engine: Any, model_path: str, out_dir: Path, device: Any) -> dict[str, Any]:
    """The streamed bf16 export, then transformers loads it and generates a few greedy tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    with peak_rss_during() as mem:
        layout = X.write_hf_weights(
            engine.module,
            out_dir,
            export_dtype=torch.bfloat16,
            max_shard_bytes=64 * MIB,
            writer=True,
        )
    X.write_hf_config(engine.module, out_dir, torch.bfloat16)
    export_s = time.perf_counter() - t0
    model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.bfloat16).to(device).eval()
    prompt = torch.tensor([[1, 100, 200, 300, 400]], device=device)
    with torch.no_grad():
        gen = model.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0)
    new_tokens = gen[0, prompt.shape[1] :].tolist()
    return {
        "files": layout["files"],
        "total_mb": round(layout["total_bytes"] / MIB, 1),
        "seconds": round(export_s, 2),
        "host_peak_increase_mb": round(mem["peak_increase"] / MIB, 1),
        "generated": new_tokens,
        "generates": len(new_tokens) == 8,
    }


def run_check(
    model_path: str,
    device_name: str,
    steps: int,
    workdir: Path,
    max_seq_len: int = 512,
    num_examples: int = 16,
    precision: str = "bf16",
) -> dict[str, Any]:
    import torch
    import transformers

    device = torch.device(device_name)
    init_one_rank("nccl" if device.type == "cuda" else "gloo")
    vocab = transformers.AutoConfig.from_pretrained(model_path).vocab_size
    examples = make_examples(num_examples, vocab, random.Random(0), 24, min(200, max_seq_len))
    res: dict[str, Any] = {
        "device": device_name,
        "precision": precision,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "runs": [],
    }
    for stage in (2, 3):
        # Default: 16 examples of 24-200 tokens packed into 512-token sequences, 2 per micro-batch.
        cfg = SFTConfig(
            model=model_path,
            zero_stage=stage,
            precision=precision,
            use_gpu=device.type == "cuda",
            num_workers=1,
            micro_batch_size=2,
            max_seq_len=max_seq_len,
            packing=True,
            learning_rate=1e-3,
            warmup_ratio=0.0,
            epochs=max(2, steps // 2),
            max_steps=steps,
        )
        engine, run = train(cfg, model_path, examples, device)
        run["export"] = export_and_reload(
            engine, model_path, workdir / f"export-zero{stage}", device
        )
        res["runs"].append(run)
        log.info("ZeRO-%d: %s", stage, json.dumps(run))
        del engine
    res["ok"] = (
        all(r["loss_fell"] and r["export"]["generates"] for r in res["runs"])
        and res["runs"][1]["load"]["partitioned_at_load"]
    )
    return res


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--model", default="", help="HF model dir (default: a random SmolLM2-shaped Llama)"
    )
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--max-seq-len", type=int, default=512, help="packed sequence length")
    ap.add_argument("--num-examples", type=int, default=16)
    ap.add_argument(
        "--precision",
        choices=("bf16", "fp32"),
        default="bf16",
        help="training precision; fp32 only for CPU runs (bf16 kernels are ~10x slower on CPU)",
    )
    ap.add_argument("--out", default="", help="default: bench/results/<date>-<gpu>.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="gpu-sft-check-") as tmp:
        model = args.model or random_smollm2(Path(tmp) / "smollm2-random")
        res = run_check(
            model,
            args.device,
            args.steps,
            Path(tmp),
            args.max_seq_len,
            args.num_examples,
            args.precision,
        )
    name = res["gpu"].replace(" ", "-").replace("/", "-")
    out = Path(args.out or RESULTS / f"{datetime.date.today().isoformat()}-{name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    log.info("%s: %s", "OK" if res["ok"] else "FAILED", out)
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
