"""The Markdown summary of a bench run (pure: results dict → text)."""

from __future__ import annotations

from typing import Any


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def table(rows: list[dict[str, Any]], cols: list[str]) -> list[str]:
    """A Markdown table of `cols` (missing values as –)."""
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return out


MODE_COLS = [
    "mode",
    "num_traces",
    "repeats",
    "median_s",
    "s_per_trace",
    "speedup",
    "probes",
    "rounds_mean",
    "prompt_tokens",
    "cached_tokens",
    "computed_prompt_tokens",
    "generated_tokens",
    "enough_share",
    "num_unparseable",
    "num_sufficient",
]


def _judge(j: dict[str, Any]) -> list[str]:
    sub, full = j.get("subset", {}), j.get("full", {})
    out = [
        f"Judge model `{j.get('judge_model')}`, engine.max_model_len={j.get('max_model_len')}, "
        f"judge.max_cot_tokens={j.get('max_cot_tokens')}, decode budget {j.get('max_new_tokens')} (generate modes), "
        f"k-ary k={j.get('kary_k')}.",
        "",
        f"### Side by side on the same {next(iter(sub.get('modes', {}).values()), {}).get('num_traces')} traces "
        "(one in-process engine, prefix cache reset before each run; seconds exclude engine start)",
        "",
    ]
    sp = sub.get("speedup_vs_paper_reference", {})
    out += table(
        [{"mode": m, "speedup": sp.get(m), **s} for m, s in sub.get("modes", {}).items()], MODE_COLS
    )
    out += ["", "Kept-prefix agreement with the paper reference:", ""]
    agr = [{"mode": m, **a} for m, a in sub.get("agreement_vs_paper_reference", {}).items()]
    agr.append(
        {"mode": "kary vs binary (logprob)", **sub.get("agreement_kary_vs_binary_logprob", {})}
    )
    out += table(
        agr,
        ["mode", "num_common", "identical_prefix_share", "mean_abs_diff_prefix_ratio_sentences"],
    )
    modes = full.get("modes", {})
    out += [
        "",
        f"### Batched modes through Ray Data (1 actor), {next(iter(modes.values()), {}).get('num_traces')} traces "
        "(median_s = in-actor judge time; wall_s adds Ray and engine start)",
        "",
    ]
    out += table(
        [{"mode": m, **s} for m, s in modes.items()],
        [
            "mode",
            "num_traces",
            "median_s",
            "wall_s",
            "s_per_trace",
            "engine_calls",
            "probes",
            "prompt_tokens",
            "cached_tokens",
            "generated_tokens",
            "enough_share",
            "num_quarantined",
        ],
    )
    out += [
        "",
        "### Search optimality (probes vs ⌈log2(n+1)⌉, rounds vs ⌈log_{k+1}(n+1)⌉; n = judged sentences)",
        "",
    ]
    out += table(
        [{"mode": m, **s.get("search_optimality", {})} for m, s in modes.items()],
        [
            "mode",
            "num_problems",
            "mean_probes",
            "mean_binary_probe_bound",
            "probes_over_binary_bound",
            "num_probes_within_binary_bound",
            "mean_rounds",
            "mean_kary_round_bound",
            "rounds_over_kary_bound",
        ],
    )
    out += [
        "",
        "### Prefix-cache efficiency: (prompt − cached tokens) / longest probe prompt, per problem",
        "",
    ]
    out += table(
        [{"mode": m, **s.get("cache_efficiency", {})} for m, s in modes.items()],
        ["mode", "num_problems", "p0", "p50", "p100", "mean"],
    )
    agr = full.get("agreement_vs_batched_generate", {})
    if agr:
        out += ["", "Kept-prefix agreement with batched generate (all traces):", ""]
        out += table(
            [{"mode": m, **a} for m, a in agr.items()],
            [
                "mode",
                "num_common",
                "identical_prefix_share",
                "mean_abs_diff_prefix_ratio_sentences",
            ],
        )
    return out


def _ray(r: dict[str, Any]) -> list[str]:
    b = r.get("bare", {})
    out = [
        f"{r.get('num_prompts')} AIME teacher prompts, {r.get('max_tokens')} new tokens, greedy. "
        f"Bare engine: start {b.get('engine_start_s')} s, generate {b.get('median_generate_s')} s "
        f"(median of {len(b.get('generate_s', []))}), {b.get('tokens_per_s_generate')} tok/s generate-only, "
        f"{b.get('tokens_per_s_end_to_end')} tok/s incl. engine start; load before {b.get('load_avg_before')}; "
        f"OMP_NUM_THREADS={r.get('omp_num_threads')}.",
        "",
    ]
    if r.get("without_omp_limit"):
        out += [
            f"Same section without OMP_NUM_THREADS (in-process engine binds OMP threads to both cores): "
            f"{r['without_omp_limit']}",
            "",
        ]
    out += table(
        r.get("ray_data", []),
        [
            "num_actors",
            "num_nodes",
            "num_cpus_per_actor",
            "wall_s",
            "generated_tokens",
            "tokens_per_s_end_to_end",
            "throughput_ratio_vs_bare_end_to_end",
            "throughput_ratio_vs_bare_generate_only",
            "overhead_s_vs_bare_end_to_end",
            "load_avg_before",
        ],
    )
    return out


def _threads(t: dict[str, Any]) -> list[str]:
    rows = [
        {"OMP_NUM_THREADS": label, **t.get(key, {})}
        for label, key in (("1", "omp_1"), ("unset", "omp_unset"))
    ]
    out = [
        "The ray section's bare-engine generation, once per setting, each in a fresh process (Ray actors always get 1).",
        "",
    ]
    out += table(
        rows,
        [
            "OMP_NUM_THREADS",
            "engine_start_s",
            "median_generate_s",
            "generated_tokens",
            "tokens_per_s_generate",
            "load_avg_before",
        ],
    )
    out += ["", f"tokens/s unset ÷ 1: {_fmt(t.get('tokens_per_s_ratio_unset_vs_1'))}"]
    return out


def _sft(s: dict[str, Any]) -> list[str]:
    out = [
        f"Model `{s.get('model')}`; {s.get('data')}: {s.get('num_examples')} examples "
        f"(tokens {s.get('example_tokens')}), packing={s.get('packing')}, max_seq_len={s.get('max_seq_len')}, "
        f"micro-batch {s.get('micro_batch_size')} per rank.",
        "",
    ]
    plains = s.get("plain_pytorch", [])
    plains = [plains] if isinstance(plains, dict) else plains
    rows = [{"run": f"plain PyTorch (1 process, {p.get('threads')} threads)", **p} for p in plains]
    rows += [
        {
            "run": f"Ray Train + DeepSpeed ZeRO-{r.get('zero_stage')} ({r.get('num_workers')} workers)",
            **r,
        }
        for r in s.get("ray_train_deepspeed", [])
    ]
    out += [
        f"Ratios are against the faster plain loop ({s.get('plain_reference_threads')} threads).",
        "",
    ]
    out += table(
        rows,
        [
            "run",
            "num_steps",
            "median_step_time_s",
            "tokens_per_s",
            "tokens_per_s_ratio_vs_plain",
            "precision",
            "train_wall_s",
            "setup_anon_peak_mb",
            "setup_peak_rss_mb",
            "load_avg_before",
        ],
    )
    out += ["", "Padding share (epoch 0, padded to the longest sequence of each micro-batch):", ""]
    out += table(
        [{"micro_batch": k, **v} for k, v in s.get("padding_share", {}).items()],
        [
            "micro_batch",
            "padding_share_packed",
            "padding_share_unpacked",
            "num_sequences_packed",
            "num_sequences_unpacked",
        ],
    )
    return out


def _scale(sec: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if "generation" in sec:
        g = sec["generation"]
        r, b = g.get("ray_data", {}), g.get("bare", {})
        lines += [
            f"**a. Generation** ({g.get('prompts')} prompts, max_tokens {g.get('max_tokens')}, T {g.get('temperature')}, "
            "natural stops): tokens/s over the generation window, engine start excluded.",
            "",
            "| path | threads | generated tokens | seconds | tokens/s | engine start s |",
            "|---|---|---|---|---|---|",
            f"| teacher stage, Ray Data, 1 actor | {r.get('cpu_threads')} | {r.get('generated_tokens')} | "
            f"{r.get('generation_span_s')} | {r.get('tokens_per_s')} | {r.get('engine_start_s')} |",
            f"| plain vLLM process, LLM.generate | {b.get('torch_threads')} | {b.get('generated_tokens')} | "
            f"{b.get('generate_s')} | {b.get('tokens_per_s')} | {b.get('engine_start_s')} |",
            "",
            f"Ratio Ray/bare: **{g.get('tokens_per_s_ratio_ray_vs_bare')}** (goal ≥ 0.95). "
            f"**b.** {r.get('num_parts')} parts of {g.get('part_rows')}: **{r.get('engine_starts')} engine start(s)** for "
            f"{r.get('num_actors')} actor(s).",
            "",
        ]
    for key, what in (
        ("driver_rss", "truncate streams ~20 KB traces (tiny model)"),
        (
            "driver_rss_eval",
            "eval streams a benchmark of ~2 KB questions, 1 sample of 4 tokens (tiny model)",
        ),
        (
            "driver_rss_sft_data",
            "sft_data tokenizes ~4 KB records, 2 per problem (default student's tokenizer)",
        ),
    ):
        if key in sec:
            lines += _rss_lines(sec[key], what)
    if "judge_interleaving" in sec:
        j = sec["judge_interleaving"]
        lines += [
            f"**d. Judge** on {j.get('traces')} real traces, batch {j.get('batch_size')}, 1 actor:",
            "",
            "| mode | wall s | engine calls | probes |",
            "|---|---|---|---|",
        ]
        for mode in ("one_batch_at_a_time", "interleaved"):
            m = j.get(mode, {})
            lines.append(
                f"| {mode} (parts {m.get('part_rows')}, {m.get('max_concurrent_batches')} in flight) | "
                f"{m.get('wall_s')} | {m.get('engine_calls')} | {m.get('num_probes')} |"
            )
        lines += [
            "",
            f"Same cuts: {j.get('same_cuts')} ({j.get('num_cut_differences')} differ); speed-up {j.get('speedup')}×.",
        ]
    return lines


def markdown(res: dict[str, Any]) -> str:
    hw = res.get("hardware", {})
    lines = [
        f"# Bench results {res.get('started')} on {hw.get('host')}",
        "",
        f"CPU {hw.get('cpu_model')}, {hw.get('num_cores')} cores, {hw.get('ram_gib')} GiB RAM, GPUs {hw.get('gpus') or 'none'}; "
        f"versions {hw.get('versions')}; git {hw.get('git')}. Load average at start {hw.get('load_avg_start')} "
        "(the machine is shared: absolute numbers are noisy, ratios measured side by side are the result).",
        "",
        f"Sizes: {res.get('sizes')}; quick={res.get('quick')}; total wall {res.get('total_wall_s')} s.",
        f"Config overrides: {res.get('config_overrides')}",
        "",
    ]
    render = {"judge": _judge, "ray": _ray, "threads": _threads, "sft": _sft, "scale": _scale}
    titles = {
        "judge": "Judge: speed-up, search optimality, prefix cache",
        "ray": "Ray overhead (generation)",
        "threads": "In-process engine threads (OMP_NUM_THREADS policy)",
        "sft": "SFT: Ray Train + DeepSpeed vs plain PyTorch",
        "scale": "Streaming stages at scale",
    }
    for name, sec in res.get("sections", {}).items():
        lines += [
            f"## {titles.get(name, name)}",
            "",
            f"Section wall {sec.get('section_wall_s')} s; load average before {sec.get('load_avg_before')}, "
            f"after {sec.get('load_avg_after')}; run started {sec.get('run_started', res.get('started'))}, "
            f"sizes {sec.get('sizes', res.get('sizes'))}.",
            "",
        ]
        if "error" in sec:
            lines += [
                f"**FAILED**: `{sec['error']}`",
                "",
                "```",
                sec.get("traceback", "")[-1500:],
                "```",
                "",
            ]
            continue
        lines += render[name](sec) + [""]
    lines += [
        "GPU check of SFT packing (lead, H200): see `bench/results/2026-11-26-h200-sft-packing.json`.",
        "",
    ]
    return "\n".join(lines)


def _rss_lines(rss: dict[str, Any], what: str) -> list[str]:
    """**c.** one stage's driver peak RSS per size, against the < 200 MB goal."""
    lines = [
        f"**c. Driver peak RSS** while {what}:",
        "",
        "| rows | parts | wall s | RSS before MB | peak MB | growth MB | out + quarantined |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, v in rss.items():
        if isinstance(v, dict):
            lines.append(
                f"| {n} | {v.get('parts')} | {v.get('wall_s')} | {v.get('rss_before_mb')} | {v.get('rss_peak_mb')} | "
                f"{v.get('growth_mb')} | {v.get('out_plus_quarantine')} |"
                if "error" not in v
                else f"| {n} | failed: {v['error'][-200:]} |"
            )
    return [*lines, "", f"Largest growth {rss.get('growth_mb_max')} MB (goal < 200 MB).", ""]
