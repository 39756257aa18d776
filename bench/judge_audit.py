"""Every judge mode, audited: the truncate stage's own audit and known-cut metrics on three trace sets.

Run as: .venv/bin/python -m bench.judge_audit [--problems 8] [--r1-problems 4] [--samples 2] [--out runs/judge_audit]

Design (fixed before any result of it was seen, issue 24.3):
- judge = student = the embedded SmolLM2-135M, jobs/configs/default.yaml otherwise (engine 2048 tokens,
  judge.max_cot_tokens 1536, align sampling and `paper` grader, 256 continuation tokens);
- modes: absolute (p(ENOUGH) >= 0.5), contextual (-0.1, the default run's), relative (0.5) with
  logprob verdicts, and the paper's decode-and-parse verdicts (`verdict=generate`, absolute,
  judge.max_new_tokens=64 instead of 256 to fit this CPU: a tag comes first or not at all);
  a second experiment, fixed before its run: `verdict=rollout` (issue 28; a variant, not the paper's
  judge) with 2 continuations per probe and 1 correct enough, on the same sets;
- trace sets: built-in short and long worked solutions (train split; known decisive sentence), and
  the R1-Distill-Qwen-7B AIME24 traces in shared/data/external (reasoning before </think>; no known cut);
- every problem of a set is audited (judge.audit_problems = --problems), --samples continuations per arm;
  sizes for this 2-core box, revised twice before any result: after measuring SmolLM2 continuations
  here at ~37 tokens/s for 32 sequences, and after a first configuration (8 long traces, absolute)
  ran 12 min without finishing (the engine actor runs one thread): 6 built-in problems per set,
  3 R1 traces, continuations capped at 96 tokens (align.max_tokens=96 in every arm and in the
  rollout verdict; the built-in answers take one short sentence after the decisive one);
- reported per (set, mode): the validity verdict, the audit (cut / one sentence less / full / empty with
  95% CIs, cut − empty, minimality), the cut shares, and on built-in traces exact/±1/early/late and the
  verdict-score AUC, with the always-full, always-first and fixed-ratio cuts and the position AUC beside.
Writes <out>/judge_audit.json and <out>/judge_audit.md.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

MODES: dict[str, list[str]] = {
    "absolute@0.5": ["judge.calibration=absolute", "judge.threshold=0.5"],
    "contextual@-0.1": ["judge.calibration=contextual", "judge.contextual_threshold=-0.1"],
    "relative@0.5": ["judge.calibration=relative", "judge.threshold=0.5"],
    "generate": ["judge.verdict=generate", "judge.calibration=absolute", "judge.max_new_tokens=64"],
    # issue 28's variant, run as a second invocation (--modes rollout) after the four above: not the
    # paper's judge; 2 continuations per probe, 1 correct makes a prefix sufficient
    "rollout": [
        "judge.verdict=rollout",
        "judge.calibration=absolute",
        "judge.rollout_samples=2",
        "judge.rollout_min_correct=1",
    ],
}
REPO = Path(__file__).resolve().parents[1]


def builtin_rows(n: int, style: str) -> list[dict[str, Any]]:
    from palign_ray.builtin import builtin_problems

    keep = ("problem_id", "question", "answer", "decisive_sentence", "decisive_char_end")
    return [
        {**{k: p[k] for k in keep}, "cot": p["solution"]}
        for p in builtin_problems(n, 0, "train", style)
    ]


def r1_rows(n: int, data_dir: str) -> list[dict[str, Any]]:
    """R1-distill AIME24 traces through the problems loader (think split, gold normalised)."""
    from palign_ray.config import ProblemsConfig
    from palign_ray.problems import load_problems

    path = os.path.join(data_dir, "external", "r1_distill_qwen7b_aime24_outputs.jsonl")
    cfg = ProblemsConfig(
        source="file", path=path, trace_field="code", id_field="idx", num_problems=0
    )
    rows, _ = load_problems(cfg)
    return [{k: r[k] for k in ("problem_id", "question", "answer", "cot")} for r in rows[:n]]


def run_one(rows: list[dict[str, Any]], overrides: list[str], n: int, samples: int) -> dict:
    from palign_ray.config import load_config
    from palign_ray.judge.stage import truncate_rows

    cfg = load_config(
        REPO / "jobs" / "configs" / "default.yaml",
        [*overrides, f"judge.audit_problems={n}", f"judge.audit_samples={samples}"],
    )
    t0 = time.perf_counter()
    out, bad, summary = truncate_rows(rows, cfg)
    return {
        "judge_audit": summary["judge_audit"],
        "num_output": len(out),
        "num_quarantined": len(bad),
        "enough_share": summary["enough_share"],
        "judge_prompt_tokens": summary["prompt_tokens"],
        "audit_generated_tokens": summary["audit_generated_tokens"],
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def _cell(c: dict | None) -> str:
    if not c:
        return "–"
    if c["value"] != c["value"]:  # nan: an AUC whose probes all lie on one side of the known cut
        return "undefined"
    lo, hi = c["ci95"]
    return f"{c['value']:.2f} [{lo:.2f}, {hi:.2f}]"


def markdown(results: dict[str, dict[str, dict]], args: argparse.Namespace) -> str:
    lines = [
        "# Judge audit: every mode on built-in and real traces (SmolLM2-135M judging itself)",
        "",
        f"{args.problems} built-in problems per set, {args.r1_problems} R1 traces, all audited, "
        f"{args.samples} continuations per arm of at most {args.max_tokens} tokens; "
        "rates = share of continuations reaching the gold answer, mean over problems, 95% bootstrap CI. "
        "Design: the docstring of bench/judge_audit.py, committed before this run.",
        "",
        "| set | mode | validity | cut | −1 sentence | full | empty | cut − empty | minimal | "
        "whole / first | median ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, modes in results.items():
        for mode, r in modes.items():
            m = r["judge_audit"]
            a, c, v = m["audit"] or {}, m["cuts"], m["validity"]
            d = a.get("cut_minus_empty")
            diff = f"{d['diff']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]" if d else "–"
            lines.append(
                f"| {name} | {mode} | {v['status']} | {_cell(a.get('cut'))} | "
                f"{_cell(a.get('shorter'))} | {_cell(a.get('full'))} | {_cell(a.get('empty'))} | "
                f"{diff} | {_cell(a.get('minimal'))} | {c['share_full']:.2f} / "
                f"{c['share_first']:.2f} | {c['prefix_ratio'].get('p50', float('nan')):.2f} |"
            )
    lines += [
        "",
        "## Known cuts (built-in traces): the judge's cuts beside trivial ones",
        "",
        "| set | cut | exact | ±1 | too early | too late | AUC |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, modes in results.items():
        baselines_done = False
        for mode, r in modes.items():
            k = r["judge_audit"]["known_cut"]
            if not k:
                continue
            rows = [(mode, k["cuts"]["judge"], k["auc"])]
            if not baselines_done:
                rows += [(b, c, None) for b, c in k["cuts"].items() if b != "judge"]
                rows.append(("position as score", None, k["auc_position"]))
                baselines_done = True
            for label, c, auc in rows:
                cells = (
                    " | ".join(_cell(c[x]) for x in ("exact", "within_1", "early", "late"))
                    if c
                    else "– | – | – | –"
                )
                lines.append(f"| {name} | {label} | {cells} | {_cell(auc)} |")
    lines += ["", "Validity reasons:", ""]
    for name, modes in results.items():
        for mode, r in modes.items():
            for reason in r["judge_audit"]["validity"]["reasons"]:
                lines.append(f"- {name} / {mode}: {reason}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--problems", type=int, default=6)
    p.add_argument("--r1-problems", type=int, default=3)
    p.add_argument(
        "--max-tokens", type=int, default=96, help="align.max_tokens of every continuation"
    )
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--sets", default="builtin-short,builtin-long,r1-aime24")
    p.add_argument("--modes", default="absolute@0.5,contextual@-0.1,relative@0.5,generate")
    p.add_argument("--data-dir", default=os.environ.get("PALIGN_DATA_DIR", "../shared/data"))
    p.add_argument("--out", default="runs/judge_audit")
    p.add_argument("--merge", help="an earlier judge_audit.json whose results this run adds to")
    args = p.parse_args(argv)
    sets = {
        "builtin-short": lambda: builtin_rows(args.problems, "short"),
        "builtin-long": lambda: builtin_rows(args.problems, "long"),
        "r1-aime24": lambda: r1_rows(args.r1_problems, args.data_dir),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, dict]] = (
        json.loads(Path(args.merge).read_text()) if args.merge else {}
    )
    for name in args.sets.split(","):
        rows = sets[name]()
        for mode in args.modes.split(","):
            over = [*MODES[mode], f"align.max_tokens={args.max_tokens}"]
            r = run_one(rows, over, len(rows), args.samples)
            results.setdefault(name, {})[mode] = r
            print(name, mode, r["judge_audit"]["validity"]["status"], r["wall_s"], "s", flush=True)
            (out / "judge_audit.json").write_text(json.dumps(results, indent=1, default=str))
            (out / "judge_audit.md").write_text(markdown(results, args))
    print((out / "judge_audit.md").read_text())


if __name__ == "__main__":
    main()
