"""Typed, frozen run configuration: one dataclass per pipeline section, YAML + dotted overrides."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from palign_ray.hardware import usable_cpus

DEFAULT_MODEL = "default"  # the embedded SmolLM2-135M-Instruct (see palign_ray.models)


def _f(  # noqa: A002 - `help` mirrors argparse's word
    default: Any, help: str, *, hashed: bool = True, hash_default: bool = True
) -> Any:
    """A dataclass field with a documented default (the doc becomes `--help` text).

    hashed=False: the field says where or how fast work runs, not what it computes, so changing it
    does not invalidate finished stages (see `config_hash`). hash_default=False: a field added after
    runs were made, whose default does what those runs did, is hashed only when set to something else,
    so those runs keep their stage hashes.
    """
    if isinstance(default, (list, dict)):
        raise TypeError("use tuples for sequence defaults so configs stay immutable")
    return field(
        default=default, metadata={"help": help, "hashed": hashed, "hash_default": hash_default}
    )


def _section(cls: type, help: str) -> Any:  # noqa: A002
    """A nested section field (a frozen dataclass with its own documented defaults)."""
    return field(default_factory=cls, metadata={"help": help, "hashed": True})


@dataclass(frozen=True)
class EngineConfig:
    """vLLM engine settings shared by every stage that generates."""

    max_model_len: int = _f(2048, "Context length of the engine (prompt + generation), tokens.")
    dtype: str | None = _f(
        None,
        "Weight/activation dtype passed to vLLM (bfloat16, float16, float32); null = platform "
        "default: bfloat16 on CUDA and on CPUs with native bf16, float32 on other CPUs (vLLM-CPU "
        "on an AVX2-only CPU: 58 tokens/s in bfloat16, 246 in float32, measured 2026-12-05).",
    )
    tensor_parallel_size: int = _f(1, "GPUs per engine (tensor parallelism); 1 on CPU.")
    gpu_memory_utilization: float | None = _f(
        None,
        "Share of accelerator memory for vLLM; null = platform default (CPU 0.5, CUDA 0.9). "
        "On CPU it must stay <= 0.5 (vLLM reads the NUMA node size).",
    )
    cpu_kvcache_space_gib: int = _f(1, "KV-cache size on CPU in GiB (VLLM_CPU_KVCACHE_SPACE).")
    enable_prefix_caching: bool = _f(
        True, "Reuse KV blocks of shared prompt prefixes (the judge relies on it)."
    )
    enforce_eager: bool | None = _f(
        None,
        "Skip graph compilation; null = platform default (CPU true: compiling costs ~100 s for ~15% speed; "
        "CUDA false: CUDA graphs).",
    )
    max_num_seqs: int | None = _f(
        None,
        "Most sequences vLLM schedules at once; null = platform default (CPU 64, CUDA 256), and the "
        "generation stages then start a request only when its prompt + max_tokens per sample fit the "
        "KV cache beside the running ones (palign_ray/admission.py). Set: that bound alone.",
    )
    block_size: int | None = _f(
        None,
        "KV-cache block size in tokens; null = vLLM's platform default (CPU 128, CUDA 16). The prefix "
        "cache reuses whole blocks only, so every judge probe recomputes up to block_size - 1 tokens "
        "of its shared prefix (bench/results/2026-12-06-kv-block-size.md). Changes what is recomputed, "
        "not what is computed: not part of the stage hash.",
        hashed=False,
    )
    seed: int = _f(0, "Engine seed; per-request seeds are derived from run.seed and problem_id.")
    cpu_threads: int | None = _f(
        None,
        "Threads of an engine on CPU (vLLM-CPU; ignored on CUDA); null = this machine's usable cores "
        "(at most ray.num_cpus when set) ÷ the stage's actors, at least 1. It reaches the actor as "
        "OMP_NUM_THREADS; Ray would give a fractional-CPU actor one thread (teacher stage on 2 "
        "cores: 77 tokens/s on 1 thread, 121 on 2, a plain vLLM process 139; "
        "bench/results/2026-12-05-vm-scale-threads.md). On a CPU cluster whose nodes differ "
        "from the driver's, set it for the node size.",
        hashed=False,
    )
    trust_remote_code: bool = _f(
        False, "Allow model repos to run their own Python code. Off unless you trust the source."
    )


@dataclass(frozen=True)
class RayConfig:
    """How stages are placed on the Ray cluster."""

    address: str = _f("", "Ray address; empty = RAY_ADDRESS if set, else a local Ray on 127.0.0.1.")
    num_cpus: int = _f(
        0, "Logical CPUs for a local Ray (0 = all cores). Ignored when joining a cluster."
    )
    num_actors: int = _f(1, "vLLM actors per generation/judge stage (the actor pool size).")
    num_cpus_per_actor: float = _f(
        0.5,
        "CPUs reserved per vLLM actor. Fractional on small CPU boxes, or read tasks starve and Ray Data deadlocks.",
    )
    num_gpus_per_actor: float | None = _f(
        None,
        "GPUs per vLLM actor; null = platform default: engine.tensor_parallel_size with a CUDA vLLM "
        "(Ray then sets the actor's CUDA_VISIBLE_DEVICES; an actor without GPUs would put every "
        "engine on GPU 0), 0 with vLLM-CPU.",
    )
    batch_size: int = _f(
        16,
        "Rows submitted to the engine together (a judge batch advances in rounds).",
        hashed=False,
    )
    max_concurrent_batches: int = _f(
        4,
        "Parts in flight per actor: their requests share the engine's running batch (continuous batching). "
        "4 on every platform: on CPU too it is the faster choice since engines use every core and the judge "
        "admits by KV (judge on 64 R1 traces, 1 actor, 2026-12-06: 227.1 s interleaved vs 242.2 s one "
        "batch at a time, same cuts; it was 209.6 vs 181.2 s with 1-thread engines, 2026-12-02).",
        hashed=False,
    )
    stall_timeout_s: float = _f(
        0.0,
        "Seconds a stage's Ray Data job may go without a part (or generation batch) finishing before "
        "Ray fails it; 0 = never. A part is one long UDF call: Ray Data's own default (30 min without "
        "progress) killed a rollout-judge part of 64 problems on this CPU box (compare_mini, "
        "2026-12-06), and a part of long R1 traces on a GPU can take longer.",
        hashed=False,
    )
    max_actor_restarts: int = _f(
        4,
        "Restarts of a killed engine actor (preempted node, OOM kill) before its stage fails; its "
        "in-flight part is retried on the restarted actor. -1 = without limit (an engine that dies "
        "at every start would then restart forever). 4 is a cap, not a measured value: a few "
        "preemptions per stage pass, a broken engine fails the stage within minutes.",
        hashed=False,
    )


@dataclass(frozen=True)
class StageEngineConfig:
    """Per-stage engine and actor pool (e.g. teacher.engine.tensor_parallel_size=4); null fields take [engine]/[ray]."""

    max_model_len: int | None = _f(None, "engine.max_model_len for this stage.")
    dtype: str | None = _f(None, "engine.dtype for this stage.")
    tensor_parallel_size: int | None = _f(
        None, "engine.tensor_parallel_size for this stage (a 32B teacher: 4; a 7B student: 1)."
    )
    gpu_memory_utilization: float | None = _f(None, "engine.gpu_memory_utilization for this stage.")
    cpu_kvcache_space_gib: int | None = _f(None, "engine.cpu_kvcache_space_gib for this stage.")
    enable_prefix_caching: bool | None = _f(None, "engine.enable_prefix_caching for this stage.")
    enforce_eager: bool | None = _f(None, "engine.enforce_eager for this stage.")
    max_num_seqs: int | None = _f(None, "engine.max_num_seqs for this stage.")
    block_size: int | None = _f(None, "engine.block_size for this stage.", hashed=False)
    cpu_threads: int | None = _f(None, "engine.cpu_threads for this stage.", hashed=False)
    num_actors: int | None = _f(
        None, "ray.num_actors for this stage (engines in the pool).", hashed=False
    )
    num_cpus_per_actor: float | None = _f(
        None, "ray.num_cpus_per_actor for this stage.", hashed=False
    )
    num_gpus_per_actor: float | None = _f(
        None,
        "ray.num_gpus_per_actor for this stage (= its tensor_parallel_size on GPUs).",
        hashed=False,
    )
    batch_size: int | None = _f(None, "ray.batch_size for this stage.", hashed=False)
    max_concurrent_batches: int | None = _f(
        None, "ray.max_concurrent_batches for this stage.", hashed=False
    )


@dataclass(frozen=True)
class RunConfig:
    """Where a run lives and what it does."""

    run_dir: str = _f(
        "runs/default",
        "Run directory: every stage writes <run_dir>/<stage>/ (shared storage on clusters).",
        hashed=False,
    )
    seed: int = _f(0, "Root seed; per-problem seeds are derived from it and problem_id.")
    chunk_size: int = _f(
        64,
        "Rows per atomic output part of a row stage: a crash loses at most one chunk (0 = one chunk).",
        hashed=False,
    )
    method: Literal["palign", "full_cot", "fixed_ratio", "prefix_only", "continuation_only"] = _f(
        "palign",
        "Which SFT set to build: palign (prefix + continuation), full_cot (long-CoT SFT), "
        "fixed_ratio (prefix of judge.fixed_ratio + continuation), prefix_only, continuation_only.",
    )
    methods: tuple[str, ...] = _f(
        (),
        "`palign compare`: the methods side by side (fixed_ratio:0.25 = fixed_ratio with judge.fixed_ratio=0.25; "
        "palign:rollout = palign with judge.verdict=rollout, a variant judge, not the paper's); "
        "empty = palign,full_cot. Each method's stages are hashed by their own settings, so this list is not.",
        hashed=False,
    )


@dataclass(frozen=True)
class ProblemsConfig:
    """The problem set fed to the teacher (or the traces to ingest)."""

    source: Literal["builtin", "file"] = _f(
        "builtin", "builtin = the generated word problems; file = read `path`."
    )
    path: str = _f("", "JSONL/Parquet file or HF datasets directory (source=file).")
    num_problems: int = _f(32, "Problems to use (first N after loading; 0 = all).")
    question_field: str = _f(
        "", "Field holding the question; empty = first of problem/question/prompt."
    )
    answer_field: str = _f(
        "", "Field holding the gold answer; empty = answer, else extracted from solution."
    )
    id_field: str = _f(
        "", "Field holding a stable id; empty = id/unique_id if present, else a content hash."
    )
    trace_field: str = _f(
        "",
        "Ingest existing traces from this field (e.g. deepseek_thinking_trajectory); empty = generate.",
    )
    trace_index: int = _f(
        0,
        "Element taken when the trace or answer field is a list of strings (or a string serialising one).",
    )
    filter: str = _f(
        "",
        "Keep rows whose column matches: col=value, col=a|b or col!=value (e.g. cot_type=math); "
        "the others are quarantined as filtered_out. Empty = all rows.",
    )
    group_field: str = _f(
        "",
        "Column the load summary counts by; empty = first of cot_type/source_type/source/subject present.",
    )
    builtin_seed: int = _f(
        0, "Seed of the built-in problem generator (same seed and num_problems → same problems)."
    )
    builtin_split: Literal["all", "train", "heldout"] = _f(
        "all",
        "Built-in problems of one side of a fixed split by template parameters (train/heldout are "
        "disjoint whatever the seeds: pair problems train with eval heldout); all = every draw.",
    )
    builtin_style: Literal["short", "long"] = _f(
        "short",
        "Built-in worked solutions: short = the steps; long = restated, a dead end and a 'Wait,', "
        "the steps, a check (as reasoning models write; gives truncation something to cut).",
    )
    dedup: bool = _f(
        True,
        "Quarantine a problem whose text repeats an earlier one's, case, whitespace and LaTeX "
        "spacing aside (duplicate_question, naming the first).",
    )
    decontaminate: bool = _f(
        True,
        "Quarantine a problem that overlaps an item of eval.benchmarks found on disk (contaminated, "
        "naming the benchmark and item): its share of the item's n-grams >= decontaminate_threshold.",
    )
    decontaminate_ngram: int = _f(
        8,
        "n of the n-grams (word, number and symbol tokens). 8 as open-r1's and s1's decontamination; "
        "bench/results/2026-12-06-decontam.md measures what it separates on the shared data.",
    )
    decontaminate_threshold: float = _f(
        0.5,
        "Share of a benchmark item's n-grams a problem must contain to count as that item "
        "(bench/results/2026-12-06-decontam.md: the measured shares, copies against the rest).",
    )


@dataclass(frozen=True)
class TeacherConfig:
    """Long-CoT generation by the teacher."""

    model: str = _f(
        DEFAULT_MODEL,
        "Teacher model: 'default', a local HF directory, or an HF id already in the local cache.",
    )
    system_prompt: str = _f("", "Optional system message for the teacher.")
    num_samples: int = _f(4, "Samples per problem; one correct trace is kept by `selection`.")
    temperature: float = _f(0.7, "Sampling temperature.")
    top_p: float = _f(0.95, "Nucleus sampling mass.")
    max_tokens: int = _f(512, "Most new tokens per trace.")
    selection: Literal["shortest_correct", "longest_correct", "first_correct"] = _f(
        "shortest_correct", "Which correct sample becomes the problem's trace."
    )
    use_reference_solutions: bool = _f(
        False,
        "Where no sample is correct but the problem has a worked `solution`, keep that as the trace (trace_source=reference).",
    )
    grade_timeout_s: float = _f(10.0, "Time bound per graded sample (math-verify).")
    backend: Literal["vllm", "openai"] = _f(
        "vllm",
        "vllm = a vLLM engine in each actor of the pool; openai = an OpenAI-compatible chat endpoint "
        "(teacher.base_url: a hosted provider or `vllm serve`), teacher.model being the served model "
        "name; one request per sample, usage and retries in the stage summary and report.md.",
        hash_default=False,  # added 2026-12-06: teacher stages hashed before keep their hashes
    )
    base_url: str = _f(
        "",
        "backend=openai: the API root, e.g. https://api.example.com/v1 or http://host:8000/v1 "
        "(requests go to <base_url>/chat/completions).",
        hashed=False,
    )
    api_key_env: str = _f(
        "OPENAI_API_KEY",
        "backend=openai: NAME of the environment variable holding the API key, read inside each actor "
        "(set it in the job's runtime_env on a cluster); the key never reaches a file, log or report. "
        "Unset or empty variable = no Authorization header (a local server).",
        hashed=False,
    )
    max_concurrent_requests: int = _f(
        32,
        "backend=openai: requests in flight per actor (provider rate limits bound it).",
        hashed=False,
    )
    request_timeout_s: float = _f(
        900.0,
        "backend=openai: seconds one request may take; a 16k-token trace at 20 tokens/s takes 800 s.",
        hashed=False,
    )
    max_retries: int = _f(
        5,
        "backend=openai: retries of a request after 429/5xx/timeouts/connection errors, with exponential "
        "backoff and jitter (Retry-After honoured); then quarantine (api_error) or, for an unavailable "
        "service, a retry by the stage's next pass or a rerun (api_unavailable).",
        hashed=False,
    )
    retry_base_s: float = _f(
        2.0, "backend=openai: first backoff (doubled per retry, jitter ½-1×).", hashed=False
    )
    retry_max_s: float = _f(
        120.0, "backend=openai: the longest single wait, Retry-After included.", hashed=False
    )
    price_prompt_per_mtok: float | None = _f(
        None,
        "backend=openai: $ per million uncached prompt tokens (report.md's cost table).",
        hashed=False,
    )
    price_cached_per_mtok: float | None = _f(
        None,
        "backend=openai: $ per million cached prompt tokens (null = the prompt price).",
        hashed=False,
    )
    price_completion_per_mtok: float | None = _f(
        None,
        "backend=openai: $ per million completion tokens, reasoning included.",
        hashed=False,
    )
    engine: StageEngineConfig = _section(
        StageEngineConfig, "Engine/actor-pool settings of this stage only (null = [engine]/[ray])."
    )


@dataclass(frozen=True)
class JudgeConfig:
    """Sentence segmentation and the student's sufficiency search."""

    model: str = _f(DEFAULT_MODEL, "Judge model (the paper uses the student itself).")
    segmentation: Literal["robust", "paper"] = _f(
        "robust", "robust = span-based splitter; paper = the authors' split('. ')."
    )
    max_sentence_chars: int = _f(
        400, "Longest sentence before text without boundaries is cut into chunks."
    )
    search: Literal["binary", "kary", "linear", "fixed_ratio"] = _f(
        "binary",
        "binary = the paper's search; kary = k cuts per round; linear = oracle scan; fixed_ratio = no judging.",
    )
    kary_k: int = _f(3, "Cut points probed per round in k-ary search.")
    fixed_ratio: float = _f(
        0.25, "Share of sentences kept by fixed_ratio truncation (the paper's baseline)."
    )
    verdict: Literal["logprob", "generate", "rollout"] = _f(
        "logprob",
        "logprob = one forward step on the first differing token; generate = the paper's decode-and-parse; "
        "rollout = NOT the paper's self-judging prompt but a variant: a prefix is enough when at least "
        "rollout_min_correct of rollout_samples student continuations from it (align prompt, sampling, "
        "grader) reach the gold answer; needs judge.model = align.model (README 'Rollout verdicts').",
    )
    rollout_samples: int = _f(4, "verdict=rollout: continuations per probed prefix.")
    rollout_min_correct: int = _f(
        1, "verdict=rollout: correct continuations that make a prefix sufficient."
    )
    calibration: Literal["absolute", "contextual", "relative"] = _f(
        "absolute",
        "How logprob verdicts are decided (needs verdict=logprob, votes=1 unless absolute). absolute = p(ENOUGH) >= "
        "threshold: the paper-like choice for strong, calibrated judges. contextual = margin log p(EN) - log p(NOT) "
        "minus the margin with empty reasoning >= contextual_threshold. relative = that difference divided by the "
        "full-trace one >= threshold. Audited with SmolLM2-135M (bench/results/2026-12-05-judge-audit-fp32.md, built-in "
        "traces with known cuts): absolute cuts every trace at sentence 1, contextual (-0.1) and relative "
        "(0.5) keep 83-100% of traces whole; all are invalid by the validity rule (README 'Is the judge valid?'). "
        "absolute is the paper-like choice for strong judges; check any judge's audit before trusting its cuts.",
    )
    threshold: float = _f(
        0.5, "Decision threshold: on p(ENOUGH) (absolute) or the normalised score (relative)."
    )
    contextual_threshold: float = _f(
        0.0, "contextual mode: least logit-margin gain over the empty prefix for ENOUGH."
    )
    min_margin_range: float = _f(
        0.1,
        "relative mode: if margin(full) - margin(empty) <= this, the judge cannot tell; keep the full trace.",
    )
    flat_fallback: Literal["full", "fixed_ratio"] = _f(
        "full",
        "relative/contextual: cut of a problem whose judge cannot be calibrated (full trace or judge.fixed_ratio).",
    )
    isotonic: bool = _f(
        False, "Decide on a monotone (PAV) fit of the probed scores instead of the raw verdicts."
    )
    votes: int = _f(1, "Judgements per probe (majority); >1 samples at judge temperature.")
    temperature: float = _f(0.0, "Judge sampling temperature (0 = greedy, reproducible).")
    max_new_tokens: int = _f(256, "Decode budget per probe in generate mode (the paper's 256).")
    unparseable: Literal["not_enough", "enough"] = _f(
        "not_enough", "Verdict for judge output with no tag (the paper: not enough)."
    )
    prompt_version: str = _f("paper-v1", "Judge prompt template version.")
    max_cot_tokens: int = _f(
        1536, "CoT tokens given to the judge; longer traces are cut at a sentence boundary first."
    )
    paper_reference: bool = _f(
        False,
        "Serial, one probe at a time, generate verdicts: the authors' algorithm on our engine.",
    )
    audit_problems: int = _f(
        256,
        "Judge audit: a seeded sample of this many problems (0 = off) on which the student continues "
        "(align prompt, sampling, grader) from the cut, one sentence less, the full judged trace and the "
        "empty prefix, to measure sufficiency and minimality of the cuts. 256 for clusters (about the "
        "rollouts of 1,024 problems' align stage at audit_samples=4, and CIs of about ±0.06 on a rate); "
        "the embedded run uses 16 (jobs/configs/default.yaml).",
    )
    audit_samples: int = _f(4, "Judge audit: continuations per audited prefix.")
    known_cut_field: str = _f(
        "decisive_sentence",
        "Input column with the 0-based index of the sentence that fixes the answer (built-in traces have "
        "one); where present (and the trace is not a teacher sample), exact/early/late shares and the AUC "
        "of the verdict score are measured against it. '' = off.",
    )
    on_invalid: Literal["warn", "fail"] = _f(
        "warn",
        "A judge invalid by the audit's validity rule (README 'Is the judge valid?'): warn = an error line "
        "and 'judge invalid' in every report; fail = also stop the pipeline before align.",
        hashed=False,
    )
    kv_admission: float = _f(
        0.9,
        "Share of the judge engine's KV cache (blocks x block size, as the engine reports it) that the "
        "problems in flight on an actor may reserve: a batch starts only when the longest probes of "
        "everything resident and its own fit, so a problem's prompt stays cached across its rounds "
        "(bench/results/2026-12-06-kv-admission.md, measured at 0.9 only: computed prefill 1.27x the "
        "longest probes against 3.87x without, at 1 GiB). 0 = every batch at once.",
        hashed=False,
    )
    engine: StageEngineConfig = _section(
        StageEngineConfig, "Engine/actor-pool settings of this stage only (null = [engine]/[ray])."
    )


@dataclass(frozen=True)
class AlignConfig:
    """Student continuation from the kept prefix and the Eq. 9 filter."""

    model: str = _f(DEFAULT_MODEL, "Student model that continues the prefix.")
    num_samples: int = _f(1, "Continuations per prefix; every correct one becomes an SFT record.")
    temperature: float = _f(0.6, "The paper's continuation temperature.")
    top_p: float = _f(0.9, "The paper's top_p.")
    repetition_penalty: float = _f(1.05, "The paper's repetition penalty.")
    max_tokens: int = _f(512, "Most new tokens per continuation.")
    prefix_begin: str = _f(
        "<Begin_of_Prefix>", "Marker before the teacher prefix in the SFT response."
    )
    prefix_end: str = _f("<End_of_Prefix>", "Marker after the teacher prefix in the SFT response.")
    max_seq_len: int = _f(
        1024,
        "Longest tokenized SFT example; longer ones are quarantined (never silently cut). At most sft.max_seq_len.",
    )
    grader: Literal["boxed", "paper"] = _f(
        "boxed",
        "Eq. 9 answer check: boxed = the last \\boxed{} must match gold (strict); paper = the authors' grader, "
        "which also accepts math-verify on the whole output (needed for students that never box, e.g. SmolLM2-135M).",
    )
    grade_timeout_s: float = _f(10.0, "Time bound per graded continuation (math-verify).")
    shard_rows: int = _f(1024, "SFT examples per Parquet shard (part-*.parquet).")
    engine: StageEngineConfig = _section(
        StageEngineConfig, "Engine/actor-pool settings of this stage only (null = [engine]/[ray])."
    )


@dataclass(frozen=True)
class SFTConfig:
    """Student fine-tuning under Ray Train + DeepSpeed ZeRO."""

    model: str = _f(DEFAULT_MODEL, "Student model to fine-tune.")
    zero_stage: int = _f(2, "DeepSpeed ZeRO stage (2 or 3).")
    offload_optimizer: bool = _f(False, "Offload optimizer state to CPU (ZeRO-Offload).")
    precision: Literal["auto", "bf16", "fp32"] = _f(
        "auto",
        "Training precision. auto: bf16 on GPU and on CPUs with native bf16 kernels (oneDNN bf16: "
        "AVX-512/AMX), fp32 on other CPUs, agreed by all ranks and recorded in the train metrics; "
        "on an AVX2-only CPU a bf16 1024x1024 matmul took 2.2 s against 13.6 ms in fp32 (measured "
        "2026-12-05), and an SFT step 94 s. bf16 on GPU only; fp32 on CPU only.",
    )
    num_workers: int = _f(2, "Ray Train workers (ranks).")
    use_gpu: bool = _f(False, "One GPU per worker.")
    cpus_per_worker: float = _f(1.0, "CPUs per Ray Train worker.")
    micro_batch_size: int = _f(2, "Sequences per rank per micro-step.")
    grad_accum_steps: int = _f(1, "Micro-steps per optimizer step.")
    epochs: int = _f(1, "Passes over the SFT set.")
    max_steps: int = _f(0, "Stop after this many optimizer steps (0 = epochs decide).")
    total_steps: int = _f(
        0,
        "Train exactly this many optimizer steps, passing over the SFT set (reshuffled each pass) as "
        "often as it takes; sft.epochs is then ignored. Compared arms whose SFT sets differ in size "
        "get the same steps and batch size this way. 0 = sft.epochs decides.",
    )
    learning_rate: float = _f(5e-5, "Peak learning rate (the paper: 5e-5).")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    warmup_ratio: float = _f(0.1, "Share of steps with linear warmup before the cosine decay.")
    grad_clip: float = _f(1.0, "Gradient norm clip.")
    gradient_checkpointing: bool = _f(False, "Recompute activations in backward to save memory.")
    loss_chunk_tokens: int = _f(
        1024,
        "Tokens per chunk of the loss: the output projection and fp32 cross-entropy run chunk by "
        "chunk and are recomputed in backward, so full-vocabulary logits of a whole packed sequence "
        "(16k tokens × 152k vocabulary ≈ 10 GB in fp32) never exist at once. 0 = one pass over "
        "full logits. ZeRO-3, and models whose logits are not head(decoder) (e.g. final "
        "soft-capping), always use the full pass. Measured (bench/results/2026-12-05-loss-memory.md, "
        "SmolLM2 fp32 on CPU): peak step memory 12%/21%/34% lower at 2k/4k/8k tokens, losses equal.",
        hashed=False,
    )
    packing: bool = _f(
        True, "Pack several examples per sequence (attention kept apart by position-id resets)."
    )
    max_seq_len: int = _f(
        1024, "Longest packed sequence; an example longer than this is quarantined (never cut)."
    )
    lora: bool = _f(
        False, "Train LoRA adapters (the paper's setting) instead of all weights; merged on export."
    )
    lora_r: int = _f(16, "LoRA rank.")
    lora_alpha: int = _f(16, "LoRA alpha.")
    lora_dropout: float = _f(0.05, "LoRA dropout.")
    lora_target_modules: tuple[str, ...] = _f(
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        "Modules that get LoRA adapters.",
    )
    checkpoint_every: int = _f(
        0, "Report a checkpoint every N optimizer steps (0 = only at the end)."
    )
    keep_checkpoints: int = _f(
        2, "Most recent checkpoints kept under <output>/ray_train/ (older ones are deleted)."
    )
    max_failures: int = _f(1, "Ray Train restarts from the last checkpoint on worker failure.")
    resume: bool = _f(False, "Continue a stopped run from its last checkpoint (same --output).")
    export_dtype: Literal["bf16", "fp32"] = _f(
        "bf16", "dtype of the exported HF safetensors model."
    )
    export_shard_mb: int = _f(
        4096,
        "Largest safetensors file of the exported model, MiB (rank 0 streams tensors into it one at a time).",
        hashed=False,
    )
    tensorboard: bool = _f(
        True,
        "Rank 0 logs loss, lr, grad norm and tokens/s per step to <output>/../tensorboard/ (offline event files).",
        hashed=False,
    )


@dataclass(frozen=True)
class EvalConfig:
    """pass@k evaluation."""

    benchmarks: tuple[str, ...] = _f(
        ("builtin",),
        "Benchmarks: builtin, gsm8k, math500, aime24, aime25, amc23, amc12, or file paths.",
    )
    data_dir: str = _f("../shared/data", "Where benchmark files live.")
    num_problems: int = _f(16, "Problems per benchmark (0 = all).")
    num_samples: int = _f(3, "Samples per problem (the paper: 3).")
    temperature: float = _f(0.6, "The paper's evaluation temperature.")
    top_p: float = _f(0.9, "The paper's top_p.")
    repetition_penalty: float = _f(1.05, "The paper's repetition penalty.")
    max_tokens: int = _f(512, "Most new tokens per sample.")
    grade_timeout_s: float = _f(10.0, "Time bound per graded answer (math-verify).")
    bootstrap_samples: int = _f(1000, "Bootstrap resamples for confidence intervals.")
    model: str = _f(
        DEFAULT_MODEL,
        "Model to evaluate ('default', a local HF directory); `palign eval --model` overrides it.",
    )
    grade_workers: int = _f(2, "Threads grading at once (each owns one math-verify child process).")
    grader: Literal["paper", "boxed"] = _f(
        "paper",
        "paper = the authors' grader (last boxed answer, OR math-verify on the whole output); boxed = last boxed answer only.",
    )
    builtin_seed: int = _f(
        1,
        "Seed of the builtin benchmark (differs from problems.builtin_seed so train and test differ).",
    )
    builtin_split: Literal["all", "train", "heldout"] = _f(
        "all",
        "Side of the built-in split the builtin benchmark draws from (heldout: no parameter draw of "
        "problems.builtin_split=train); all = every draw.",
    )
    engine: StageEngineConfig = _section(
        StageEngineConfig, "Engine/actor-pool settings of this stage only (null = [engine]/[ray])."
    )


@dataclass(frozen=True)
class Config:
    """A whole run."""

    run: RunConfig = field(default_factory=RunConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    problems: ProblemsConfig = field(default_factory=ProblemsConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


class ConfigError(ValueError):
    """A config file or override that does not match the schema (names the key)."""


def _number(key: str, tp: type, text: str) -> Any:
    """A number written as people write it: `1e-4`, `5e-5`, `1_000` (YAML 1.1 reads the first two as text)."""
    try:
        return tp(text.strip())
    except ValueError:
        raise ConfigError(f"{key}: expected {tp.__name__}, got str {text!r}") from None


def _check_type(key: str, tp: Any, value: Any) -> Any:
    """Return `value` coerced to `tp` where lossless (int → float, list → tuple), else raise."""
    origin = get_origin(tp)
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {list(get_args(tp))}")
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in get_args(tp):
            if arg is type(None) and value is None:
                return None
            try:
                return _check_type(key, arg, value)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} does not match {tp}")
    if origin is tuple:
        (item_tp, _ellipsis) = get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        return tuple(_check_type(f"{key}[{i}]", item_tp, v) for i, v in enumerate(value))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, str):
        value = _number(key, tp, value)
    if tp in (int, float) and isinstance(value, bool) or not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"section '{prefix}'" if prefix else "top level"
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)} in {where}; known: {sorted(names)}"
        )
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if isinstance(tp, type) and dataclasses.is_dataclass(
            tp
        ):  # a section (isinstance: for the type checker)
            kwargs[name] = _build(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _check_type(prefix + name, tp, value)
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: '{part}' is not a section")
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`["judge.threshold=0.3", "sft.lora=true"]` → nested dict; values are parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value (e.g. judge.threshold=0.3)")
        _set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw.strip() else "")
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def config_from_dict(data: dict[str, Any], overrides: list[str] | None = None) -> Config:
    return _build(Config, _merge(data, parse_overrides(overrides or [])), "")


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load YAML (or defaults when path is None), apply `key=value` overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from e
    try:
        return config_from_dict(data, overrides)
    except ConfigError as e:
        raise ConfigError(f"{path or '<defaults>'}: {e}") from None


def section_override(cfg: Any, overrides: list[str]) -> Any:
    """Apply overrides to one section dataclass (used by subcommands that take only one section)."""
    tree = _merge(to_dict(cfg), parse_overrides(overrides))
    return _build(type(cfg), tree, "")


def to_dict(cfg: Any) -> dict[str, Any]:
    def conv(v: Any) -> Any:
        return list(v) if isinstance(v, tuple) else v

    return {
        f.name: (
            to_dict(getattr(cfg, f.name))
            if dataclasses.is_dataclass(getattr(cfg, f.name))
            else conv(getattr(cfg, f.name))
        )
        for f in dataclasses.fields(cfg)
    }


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def _hashed_view(cfg: Any) -> dict[str, Any]:
    """to_dict without the fields marked hashed=False (placement and chunking, not results)."""
    out = {}
    for f in dataclasses.fields(cfg):
        if not f.metadata.get("hashed", True):
            continue
        v = getattr(cfg, f.name)
        if not f.metadata.get("hash_default", True) and v == f.default:
            continue
        if (
            v is None
            and isinstance(cfg, EngineConfig)
            and f.name in PLATFORM_ENGINE_DEFAULTS["cpu"]
        ):
            # A platform default hashes as its CPU value: runs finished before these fields became
            # platform-dependent (when they were these CPU values) keep their stage hashes.
            v = PLATFORM_ENGINE_DEFAULTS["cpu"][f.name]
        out[f.name] = (
            _hashed_view(v)
            if dataclasses.is_dataclass(v)
            else (list(v) if isinstance(v, tuple) else v)
        )
    return out


def config_hash(*sections: Any) -> str:
    """Stable short hash of config sections (stage invalidation keys); hashed=False fields are left out."""
    blob = json.dumps([_hashed_view(s) for s in sections], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# engine.* fields whose null default depends on where the engine runs. CPU: the settings measured on
# the 2-core box (README); CUDA: CUDA graphs, most of the GPU for weights + KV cache, bigger batches.
PLATFORM_ENGINE_DEFAULTS: dict[str, dict[str, Any]] = {
    "cpu": {
        "enforce_eager": True,
        "gpu_memory_utilization": 0.5,
        "max_num_seqs": 64,
        "dtype": "bfloat16",  # float32 where the CPU lacks native bf16 (resolve_engine_defaults)
    },
    "cuda": {
        "enforce_eager": False,
        "gpu_memory_utilization": 0.9,
        "max_num_seqs": 256,
        "dtype": "bfloat16",
    },
}


def resolve_engine_defaults(
    engine: EngineConfig, on_cuda: bool, cpu_bf16: bool = True
) -> EngineConfig:
    """`engine` with its null (platform-default) fields filled for CUDA or CPU; set fields are kept.

    Call it where the engine is built (the node that runs it knows its platform and, for `cpu_bf16`,
    whether its CPU has native bf16: palign_ray.hardware), and in `palign config`.
    """
    defaults = dict(PLATFORM_ENGINE_DEFAULTS["cuda" if on_cuda else "cpu"])
    if not on_cuda and not cpu_bf16:
        defaults["dtype"] = "float32"
    return dataclasses.replace(
        engine, **{k: v for k, v in defaults.items() if getattr(engine, k) is None}
    )


# Sections with an `engine` override; which stage runs with which is its row's `engine_section`
# (palign_ray.pipeline.STAGES: truncation runs the judge's).
ENGINE_SECTIONS = ("teacher", "judge", "align", "eval")


def stage_engine(cfg: Config, section: str) -> tuple[EngineConfig, RayConfig]:
    """The engine and actor-pool settings one stage runs with: [engine]/[ray] overlaid by <section>.engine."""
    if section not in ENGINE_SECTIONS:
        raise ValueError(
            f"no engine settings for section {section!r}; sections with engines: {list(ENGINE_SECTIONS)}"
        )
    over = getattr(cfg, section).engine
    set_fields = {
        f.name: getattr(over, f.name)
        for f in dataclasses.fields(over)
        if getattr(over, f.name) is not None
    }
    engine_keys = {f.name for f in dataclasses.fields(EngineConfig)}
    engine = dataclasses.replace(
        cfg.engine, **{k: v for k, v in set_fields.items() if k in engine_keys}
    )
    ray = dataclasses.replace(
        cfg.ray, **{k: v for k, v in set_fields.items() if k not in engine_keys}
    )
    if ray.num_gpus_per_actor is None:
        from palign_ray.engines.vllm_engine import is_cpu_build

        gpus = 0.0 if is_cpu_build() else float(engine.tensor_parallel_size)
        ray = dataclasses.replace(ray, num_gpus_per_actor=gpus)
    if engine.cpu_threads is None:
        engine = dataclasses.replace(
            engine, cpu_threads=default_cpu_threads(ray.num_cpus, usable_cpus(), ray.num_actors)
        )
    if ray.num_gpus_per_actor and ray.num_gpus_per_actor < engine.tensor_parallel_size:
        raise ConfigError(
            f"{section}: num_gpus_per_actor={ray.num_gpus_per_actor} is less than tensor_parallel_size="
            f"{engine.tensor_parallel_size}; an engine needs one GPU per tensor-parallel rank "
            f"(set {section}.engine.num_gpus_per_actor)"
        )
    return engine, ray


def default_cpu_threads(ray_cpus: int, usable: int, num_actors: int) -> int:
    """Threads per CPU engine when unset: the machine's cores (no more than `ray.num_cpus` when set;
    a local Ray may declare more logical CPUs than there are cores) shared evenly by a stage's actors.

    Ray Data's read and write tasks run beside the engines; they sleep while the engines compute, so
    the engines may take every core (measured: see EngineConfig.cpu_threads).
    """
    cores = min(ray_cpus, usable) if ray_cpus > 0 else usable
    return max(1, cores // max(1, num_actors))


def help_lines(cls: type = Config, prefix: str = "") -> list[str]:
    """`key (type, default): doc` for every field; the CLI's --help text."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            lines.append(f"[{prefix}{f.name}] {(tp.__doc__ or '').strip()}")
            lines += help_lines(tp, f"{prefix}{f.name}.")
        else:
            lines.append(f"  {prefix}{f.name}={f.default!r}  {f.metadata.get('help', '')}")
    return lines
