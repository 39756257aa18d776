"""Peak host memory of one SFT micro-step (forward + backward) with the full-logits loss vs the chunked one.

Design (issue 29.4, fixed before the run): SmolLM2-135M-Instruct (vocabulary 49,152) in fp32 on CPU, one
packed sequence of 2k, 4k and 8k tokens whose second half is labelled, `sft.loss_chunk_tokens` 0 (full
logits) and 1024. Each measurement is a fresh process; the result is the peak RSS during the step
(sampled every 5 ms) minus the RSS after loading the model and building the batch, so the weights are
not counted. The loss of both paths is kept to compare. Run: `python -m bench.loss_memory [--out F]`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

LENGTHS = (2048, 4096, 8192)
CHUNKS = (0, 1024)


def one(length: int, chunk: int) -> dict[str, Any]:
    """In this process: load, build the batch, one forward + backward; memory and loss."""
    import psutil
    import torch
    from transformers import AutoModelForCausalLM

    from palign_ray.models import resolve_model
    from palign_ray.sft import data as D
    from palign_ray.sft.core import micro_loss

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(resolve_model("default"), dtype=torch.float32)
    ids = torch.randint(10, model.config.vocab_size, (1, length)).tolist()
    labels = [[D.IGNORE_INDEX] * (length // 2) + ids[0][length // 2 :]]
    batch = {"input_ids": ids, "labels": labels, "position_ids": [list(range(length))]}
    me = psutil.Process()
    base = me.memory_info().rss
    peak = [base]
    done = threading.Event()

    def sample() -> None:  # the step's own peak (ru_maxrss would also hold loading's transients)
        while not done.is_set():
            peak[0] = max(peak[0], me.memory_info().rss)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    loss, value = micro_loss(model, batch, torch.device("cpu"), chunk)
    loss.backward()
    secs = time.perf_counter() - t0
    done.set()
    sampler.join()
    return {
        "tokens": length,
        "loss_chunk_tokens": chunk,
        "vocab": model.config.vocab_size,
        "loss": value,
        "step_s": round(secs, 1),
        "peak_above_loaded_mib": round((peak[0] - base) / 2**20, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="")
    p.add_argument("--one", nargs=2, type=int, metavar=("TOKENS", "CHUNK"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one(*args.one)), flush=True)
        return
    rows = []
    for length in LENGTHS:
        for chunk in CHUNKS:
            proc = subprocess.run(
                [sys.executable, "-m", "bench.loss_memory", "--one", str(length), str(chunk)],
                capture_output=True,
                text=True,
                cwd=Path(__file__).resolve().parents[1],
            )
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            row = json.loads(line[-1][7:]) if line else {"error": proc.stderr[-1500:]}
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
