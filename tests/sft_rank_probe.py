"""One DeepSpeed rank of a gloo group, without Ray: load (host memory measured), one SFT step, the export.

Run as (one process per rank; tests/test_sft_core.py starts them):
    MASTER_ADDR=127.0.0.1 MASTER_PORT=P RANK=r WORLD_SIZE=n LOCAL_RANK=r \
        python tests/sft_rank_probe.py --model DIR --zero-stage 3 --out rank_r.json [--export-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--zero-stage", type=int, required=True)
    ap.add_argument("--lora", action="store_true")
    ap.add_argument("--out", required=True)
    ap.add_argument("--export-dir", default="")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    args = ap.parse_args()

    import deepspeed
    import torch
    import torch.distributed as dist
    from transformers import AutoTokenizer

    from palign_ray.config import SFTConfig
    from palign_ray.sft import core
    from palign_ray.sft import data as D
    from palign_ray.sft import export as X
    from palign_ray.sft.memory import MIB, peak_rss_during

    core.skip_shm_op_build()
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = SFTConfig(
        model=args.model,
        zero_stage=args.zero_stage,
        precision=args.precision,
        num_workers=world,
        micro_batch_size=1,
        lora=args.lora,
        learning_rate=1e-4,
        warmup_ratio=0.0,
    )
    engine, load = core.build_engine(cfg, args.model, world, False, total_steps=4)

    # The same two examples on every run: rank r trains on example r of each step.
    tok = AutoTokenizer.from_pretrained(args.model)
    texts = [
        "Q: What is 2 + 3? A: 2 + 3 = 5, so the answer is \\boxed{5}.",
        "Q: What is 7 times 6? A: 7 times 6 is 42, so the answer is \\boxed{42}.",
    ]
    examples = []
    for i, t in enumerate(texts):
        ids = tuple(tok(t)["input_ids"])
        examples.append(D.Example(f"p{i}", ids, tuple([0] * 4 + [1] * (len(ids) - 4))))
    micro = tuple(
        ((r % len(examples),),) for r in range(world)
    )  # rank → sequences → example indices
    plan_step = (micro,)
    losses = []
    for _ in range(args.steps):
        loss_sum, n_tok, _ = core.run_step(
            engine,
            plan_step,
            examples,
            rank=rank,
            world=world,
            grad_accum_steps=1,
            pad_id=tok.eos_token_id,
            device=torch.device("cpu"),
        )
        total = torch.tensor([loss_sum], dtype=torch.float64)
        dist.all_reduce(total)
        losses.append(total.item() / max(1, D.step_loss_tokens(plan_step, examples)))
    out = {
        "rank": rank,
        "world": world,
        "zero_stage": args.zero_stage,
        "load": load,
        "losses": losses,
    }
    if args.export_dir:
        with peak_rss_during() as mem:
            X.write_hf_weights(
                engine.module,
                Path(args.export_dir),
                export_dtype=torch.bfloat16,
                max_shard_bytes=4096 * MIB,
                writer=rank == 0,
            )
        if rank == 0:
            X.write_hf_config(engine.module, Path(args.export_dir), torch.bfloat16)
        out["export"] = {k: round(v / MIB, 1) for k, v in mem.items()}
    Path(args.out).write_text(json.dumps(out))
    dist.barrier()
    os._exit(0)  # skip DeepSpeed/gloo teardown at exit (it can hang for seconds on a loaded box)


if __name__ == "__main__":
    main()
