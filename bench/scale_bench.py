"""Streaming stages at scale: Ray Data generation vs a bare engine, engine starts, driver memory, judge interleaving.

a. the teacher stage through Ray Data (1 actor) vs `LLM.generate` in a plain process of its own (vLLM's
   default threading) over the same prompts and seeds, sampled with natural stops; tokens/s over the
   generation window, engine start excluded on both sides;
b. engine starts of that stage (parts of 32) against the actor count;
c. the driver's peak RSS growth while a truncate stage streams N rows of ~20 KB traces, and while an
   evaluation streams N problems of ~2 KB (in a child process: only the driver is measured, the actors are
   other processes);
d. the judge on real traces, batches of 16 and one actor, one batch at a time vs interleaved.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from palign_ray.config import Config

log = logging.getLogger(__name__)


def _cfg(cfg: Config, run_dir: Path, **over: Any) -> Config:
    from palign_ray.config import config_from_dict, to_dict

    d = to_dict(cfg)
    d["run"] = {**d["run"], "run_dir": str(run_dir)}
    for key, value in over.items():
        section, field = key.split("__")
        d[section] = {**d[section], field: value}
    return config_from_dict(d)


def generation_vs_bare(
    cfg: Config, num_prompts: int, max_tokens: int, part_rows: int
) -> dict[str, Any]:
    """(a) and (b): the teacher stage on built-in problems vs a bare engine on the same token ids and seeds."""
    from palign_ray import pipeline as P

    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    run_cfg = _cfg(
        cfg,
        tmp / "run",
        problems__num_problems=num_prompts,
        teacher__num_samples=1,
        teacher__max_tokens=max_tokens,
        teacher__temperature=0.6,
        run__chunk_size=part_rows,
        teacher__use_reference_solutions=True,
        ray__num_actors=1,
    )
    t0 = time.perf_counter()
    manifests = P.run_pipeline(run_cfg, ["problems", "teacher"])
    stage_wall = time.perf_counter() - t0
    from palign_ray.artifacts import StageDir

    sd = StageDir(tmp / "run" / "teacher")
    tokens, span = generation_span(sd)
    starts = [json.loads(f.read_text()) for f in (sd.root / "engines").glob("*.json")]
    ray_side = {
        "generated_tokens": tokens,
        "generation_span_s": round(span, 2),
        "tokens_per_s": round(tokens / span, 2),
        "engine_start_s": [s.get("start_s") for s in starts],
        "stage_wall_s": round(stage_wall, 1),
        "num_parts": manifests["teacher"]["num_parts"],
        "engine_starts": manifests["teacher"]["engine_starts"],
        "num_actors": 1,
        "cpu_threads": [s.get("cpu_threads") for s in starts],
    }
    bare = _bare_in_child(run_cfg, tmp / "run")
    return {
        "prompts": num_prompts,
        "max_tokens": max_tokens,
        "temperature": 0.6,
        "part_rows": part_rows,
        "ray_data": ray_side,
        "bare": bare,
        "tokens_per_s_ratio_ray_vs_bare": round(ray_side["tokens_per_s"] / bare["tokens_per_s"], 3),
    }


def generation_span(sd: Any) -> tuple[int, float]:
    """(generated tokens, seconds) of a generation stage: its parts overlap, so the time is the span of
    their generation windows, not their sum."""
    parts = [c["summary"] for c in sd.commits()]
    windows = [p["generation_window"] for p in parts if p.get("generation_window")]
    span = max(w[1] for w in windows) - min(w[0] for w in windows)
    return sum(int(p.get("generated_tokens", 0)) for p in parts), span


def _bare_in_child(cfg: Config, run_dir: Path) -> dict[str, Any]:
    """The baseline in a plain process of its own: nothing else (Ray, the stage's memory) shares it."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.scale_bench",
            "bare-child",
            str(run_dir),
            json.dumps(_child_cfg(cfg)),
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=3600,
        # vLLM's default threading: not the OMP_NUM_THREADS=1 that bench.run sets for in-process engines
        env={k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"},
    )
    line = [x for x in proc.stdout.splitlines() if x.startswith("BARE ")]
    return json.loads(line[-1][5:]) if line else {"error": proc.stderr[-2000:]}


def bare_child(run_dir: str, cfg_json: str) -> None:
    from palign_ray.config import config_from_dict

    print(
        "BARE " + json.dumps(_bare_generate(config_from_dict(json.loads(cfg_json)), Path(run_dir))),
        flush=True,
    )


def _bare_generate(cfg: Config, run_dir: Path) -> dict[str, Any]:
    """One engine at vLLM's own threading, one `LLM.generate` over every prompt (the teacher's ids and
    per-problem seeds)."""
    from palign_ray.artifacts import StageDir
    from palign_ray.chat import chat_ids, user_turn
    from palign_ray.config import stage_engine
    from palign_ray.engines.base import SamplingSpec
    from palign_ray.engines.vllm_engine import VLLMEngine
    from palign_ray.generation import derive_seed
    from palign_ray.models import resolve_model
    from palign_ray.teacher import STAGE, teacher_prompt

    problems = StageDir(run_dir / "problems").output_rows()
    engine_cfg = dataclasses.replace(stage_engine(cfg, "teacher")[0], cpu_threads=None)
    t0 = time.perf_counter()
    engine = VLLMEngine(resolve_model(cfg.teacher.model), engine_cfg)
    start_s = time.perf_counter() - t0
    try:
        ids = [
            chat_ids(
                engine.tokenizer,
                user_turn(teacher_prompt(p["question"]), cfg.teacher.system_prompt),
            )
            for p in problems
        ]
        t = cfg.teacher
        specs = [
            SamplingSpec(
                max_tokens=t.max_tokens,
                temperature=t.temperature,
                top_p=t.top_p,
                seed=derive_seed(cfg.run.seed, str(p["problem_id"]), STAGE),
            )
            for p in problems
        ]
        t0 = time.perf_counter()
        res = engine.generate(ids, specs)
        secs = time.perf_counter() - t0
    finally:
        engine.shutdown()
    tokens = sum(r.num_generated_tokens for r in res)
    lengths = sorted(len(c.token_ids) for r in res for c in r.completions)
    return {
        "generated_tokens": tokens,
        "generate_s": round(secs, 2),
        "tokens_per_s": round(tokens / secs, 2),
        "engine_start_s": round(start_s, 2),
        "torch_threads": _torch_threads(),
        "median_tokens": lengths[len(lengths) // 2],
        "finished_by_stop": sum(c.finish_reason == "stop" for r in res for c in r.completions),
    }


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def driver_rss(
    cfg: Config, num_rows: list[int], trace_chars: int, stage: str = "truncate"
) -> dict[str, Any]:
    """(c) one child process per size: it streams a truncate stage over pre-written input parts, or (eval)
    evaluates a benchmark file of that many problems."""
    out = {}
    for n in num_rows:
        tmp = Path(tempfile.mkdtemp(prefix="bench-rss-"))
        if stage == "eval":
            _write_benchmark(tmp / "bench.jsonl", n, trace_chars)
        elif stage == "sft_data":
            _write_aligned(tmp / "input", n, trace_chars)
        else:
            _write_traces(tmp / "input", n, trace_chars)
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.scale_bench",
                "rss-child",
                str(tmp),
                json.dumps(_child_cfg(cfg)),
                stage,
            ],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
            timeout=3600,
        )
        line = [x for x in proc.stdout.splitlines() if x.startswith("RSS ")]
        out[str(n)] = json.loads(line[-1][4:]) if line else {"error": proc.stderr[-2000:]}
    sizes = [str(n) for n in num_rows]
    if all("growth_mb" in out[s] for s in sizes):
        out["growth_mb_max"] = max(out[s]["growth_mb"] for s in sizes)
    return out


def _child_cfg(cfg: Config) -> dict[str, Any]:
    from palign_ray.config import to_dict

    return to_dict(cfg)


def _write_traces(src_dir: Path, n: int, trace_chars: int, part: int = 500) -> None:
    """n problems with ~trace_chars-character traces, written as input parts (not by the measured driver)."""
    from palign_ray.artifacts import StageDir

    sd = StageDir(src_dir)
    sentence = "We add the next two numbers and check the running total once more. "
    cot = (sentence * (trace_chars // len(sentence) + 1))[:trace_chars]
    for lo in range(0, n, part):
        sd.write_part(
            [
                {
                    "problem_id": f"r{i:06d}",
                    "question": f"What is {i} + 1?",
                    "cot": cot,
                    "answer": str(i + 1),
                }
                for i in range(lo, min(n, lo + part))
            ],
            [],
        )


def _write_aligned(src_dir: Path, n: int, text_chars: int, part: int = 500) -> None:
    """n align rows (2 samples per problem, ~text_chars of prefix + continuation each) as input parts."""
    from palign_ray.artifacts import StageDir

    sd = StageDir(src_dir)
    sentence = "We add the next two numbers and check the running total once more. "
    text = (sentence * (text_chars // len(sentence) + 1))[: text_chars // 2]
    for lo in range(0, n, part):
        sd.write_part(
            [
                {
                    "problem_id": f"a{i // 2:06d}",
                    "sample_index": i % 2,
                    "question": f"What is {i // 2} + 1?",
                    "answer": str(i // 2 + 1),
                    "prefix": text,
                    "continuation": f"{text} Sample {i % 2}: the answer is \\boxed{{{i // 2 + 1}}}.",
                }
                for i in range(lo, min(n, lo + part))
            ],
            [],
        )


def _write_benchmark(path: Path, n: int, question_chars: int) -> None:
    """n problems with ~question_chars-character questions as a benchmark file (gold: the problem's number)."""
    filler = "Recall that the total is the sum of every number listed before this sentence. "
    pad = (filler * (question_chars // len(filler) + 1))[:question_chars]
    with path.open("w") as fh:
        for i in range(n):
            row = {"id": f"q{i:06d}", "question": f"{pad}\nWhat is {i} + 1?", "answer": str(i + 1)}
            fh.write(json.dumps(row) + "\n")


def rss_child(tmp: str, cfg_json: str, stage: str = "truncate") -> None:
    import psutil

    from palign_ray.artifacts import StageDir
    from palign_ray.config import config_from_dict
    from palign_ray.judge.stage import judge_job
    from palign_ray.ray_env import init_ray
    from palign_ray.streaming import run_stream

    cfg = config_from_dict(json.loads(cfg_json))
    init_ray(cfg.ray)
    me = psutil.Process()
    before = me.memory_info().rss
    peak = [before]
    import threading

    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], me.memory_info().rss)
            time.sleep(0.05)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    if stage == "eval":
        from palign_ray.eval.stage import SAMPLES, evaluate

        ev = dataclasses.replace(cfg.eval, benchmarks=(str(Path(tmp) / "bench.jsonl"),))
        metrics = evaluate(dataclasses.replace(cfg, eval=ev), Path(tmp) / "eval")
        sd = StageDir(Path(tmp) / "eval" / SAMPLES)
        rows, starts = metrics["average"]["num_problems"], metrics["stream"]["engine_starts"]
    elif stage == "sft_data":
        from palign_ray.sft.stage import build_stage_shards

        src, sd = StageDir(Path(tmp) / "input"), StageDir(Path(tmp) / "sft_data" / "shards")
        summary, res = build_stage_shards(cfg, "palign", src.output_files(), sd)
        rows, starts = summary["num_in"], res.engine_starts
    else:
        src, sd = StageDir(Path(tmp) / "input"), StageDir(Path(tmp) / "truncate")
        res = run_stream(judge_job(cfg), src.output_files(), sd)
        rows, starts = res.num_input, res.engine_starts
    wall = time.perf_counter() - t0
    stop.set()
    th.join()
    peak[0] = max(peak[0], me.memory_info().rss)
    m = sd.commits()
    print(
        "RSS "
        + json.dumps(
            {
                "stage": stage,
                "rows": rows,
                "parts": len(m),
                "wall_s": round(wall, 1),
                "engine_starts": starts,
                "rss_before_mb": round(before / 2**20, 1),
                "rss_peak_mb": round(peak[0] / 2**20, 1),
                "growth_mb": round((peak[0] - before) / 2**20, 1),
                "out_plus_quarantine": sum(c["num_output"] + c["num_quarantined"] for c in m),
            }
        ),
        flush=True,
    )


def judge_interleaving(cfg: Config, traces: list[dict[str, Any]]) -> dict[str, Any]:
    """(d) the same traces and judge settings: one batch of 16 at a time vs parts of 64 with batches interleaved."""
    from palign_ray.judge.stage import truncate_rows

    out: dict[str, Any] = {"traces": len(traces), "batch_size": 16}
    cuts = {}
    for name, chunk, concurrent in (("one_batch_at_a_time", 16, 1), ("interleaved", 64, 4)):
        run = dataclasses.replace(
            cfg,
            run=dataclasses.replace(cfg.run, chunk_size=chunk),
            ray=dataclasses.replace(
                cfg.ray, num_actors=1, batch_size=16, max_concurrent_batches=concurrent
            ),
        )
        t0 = time.perf_counter()
        rows, bad, summary = truncate_rows(traces, run)
        wall = time.perf_counter() - t0
        cuts[name] = {r["problem_id"]: r["prefix_sentences"] for r in rows}
        out[name] = {
            "wall_s": round(wall, 1),
            "engine_calls": summary["engine_calls"],
            "num_probes": summary["num_probes"],
            "engine_starts": summary["engine_starts"],
            "num_output": len(rows),
            "num_quarantined": len(bad),
            "part_rows": chunk,
            "max_concurrent_batches": concurrent,
        }
    a, b = cuts["one_batch_at_a_time"], cuts["interleaved"]
    out["same_cuts"] = a == b
    out["num_cut_differences"] = sum(a.get(k) != b.get(k) for k in set(a) | set(b))
    out["speedup"] = round(out["one_batch_at_a_time"]["wall_s"] / out["interleaved"]["wall_s"], 2)
    return out


def run(
    cfg: Config,
    traces: list[dict[str, Any]],
    gen_prompts: int,
    gen_max_tokens: int,
    rss_rows: list[int],
    judge_traces: int,
    rss_truncate: bool = True,
) -> dict[str, Any]:
    """Every part whose size is > 0 (`--set-size scale_gen_prompts=0` skips a)."""
    out: dict[str, Any] = {}
    if gen_prompts:
        out["generation"] = generation_vs_bare(cfg, gen_prompts, gen_max_tokens, part_rows=32)
    if any(rss_rows):
        from palign_ray.models import build_tiny_model

        tiny = build_tiny_model(
            Path(tempfile.mkdtemp(prefix="bench-tiny-")) / "tiny-llama"
        )  # fast: it is the driver we measure
        rss_cfg = _cfg(
            cfg,
            Path(tempfile.mkdtemp()),
            judge__model=str(tiny),
            judge__max_cot_tokens=64,
            run__chunk_size=64,
        )
        if rss_truncate:
            out["driver_rss"] = driver_rss(rss_cfg, [n for n in rss_rows if n], trace_chars=20_000)
        # eval: 2 KB questions, 1 sample of 4 tokens: the driver holds counts whatever the samples' length,
        # and 2 samples of 32 tokens took 517 s per 1k problems here (20k: ~3 h)
        eval_cfg = _cfg(
            rss_cfg,
            Path(tempfile.mkdtemp()),
            eval__model=str(tiny),
            eval__num_problems=0,
            eval__num_samples=1,
            eval__max_tokens=4,
            eval__bootstrap_samples=100,
        )
        out["driver_rss_eval"] = driver_rss(
            eval_cfg, [n for n in rss_rows if n], trace_chars=2_000, stage="eval"
        )
        # sft_data: ~4 KB records (2 per problem) tokenized for the default student, one input part per 500 rows
        # (~900 tokens each: align.max_seq_len 2048 keeps them, so the shards hold real examples)
        sft_cfg = _cfg(rss_cfg, Path(tempfile.mkdtemp()), align__max_seq_len=2048)
        out["driver_rss_sft_data"] = driver_rss(
            sft_cfg, [n for n in rss_rows if n], trace_chars=4_000, stage="sft_data"
        )
    if judge_traces:
        out["judge_interleaving"] = judge_interleaving(cfg, traces[:judge_traces])
    return out


if __name__ == "__main__":
    if sys.argv[1] == "rss-child":
        logging.basicConfig(level=logging.WARNING)
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        rss_child(sys.argv[2], sys.argv[3], *sys.argv[4:5])
    elif sys.argv[1] == "bare-child":
        logging.basicConfig(level=logging.WARNING)
        bare_child(sys.argv[2], sys.argv[3])
