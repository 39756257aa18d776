"""`<run_dir>/compare/`: report.md, compare.json and PNGs of a `palign compare` run (Table-1 layout).

Scores come from each evaluation's per-sample labels (`samples.jsonl`, failed problems from
`quarantine.jsonl` as incorrect), so differences can be paired problem by problem; counts, tokens
and wall times from the stage manifests and commit markers. Whatever has not run yet shows as "—".
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from palign_ray import compare_stats as S
from palign_ray.artifacts import StageDir, read_jsonl, write_json
from palign_ray.config import Config

log = logging.getLogger(__name__)

BASE = "base"


def _eval_rows(model_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
    """(samples, failed problems) of one finished evaluation, or None if it has not finished."""
    from palign_ray.eval.score import FAILED_REASONS

    if not (model_dir / ".done").is_file():
        return None
    samples, _ = read_jsonl(model_dir / "samples.jsonl")
    quar, _ = (
        read_jsonl(model_dir / "quarantine.jsonl")
        if (model_dir / "quarantine.jsonl").is_file()
        else ([], [])
    )
    return samples, [q for q in quar if q.get("reason") in FAILED_REASONS]


def _correct(
    rows: tuple[list[dict[str, Any]], list[dict[str, Any]]], num_samples: int
) -> dict[str, dict[str, list[bool]]]:
    return S.correct_by_problem(rows[0], rows[1], num_samples)


def _ks(correct: list[dict[str, dict[str, list[bool]]]]) -> list[int]:
    """pass@1 and pass@n with n the smallest sample count of any problem (the paper: Pass@1, Pass@3)."""
    n = min(
        (len(c) for cb in correct for by_pid in cb.values() for c in by_pid.values()), default=1
    )
    return sorted({1, max(1, n)})


def _strata(
    correct: dict[str, dict[str, list[bool]]], benches: list[str], k: int
) -> dict[str, dict[str, float]]:
    return {b: S.pass_k_by_problem(correct.get(b, {}), k) for b in benches}


def score_rows(
    rows: dict[str, dict[str, dict[str, list[bool]]]],
    benches: list[str],
    ks: list[int],
    num_resamples: int,
    seed: int,
) -> dict[str, Any]:
    """label → {"pass@k": {bench or "average": cell}} with bootstrap CIs."""
    out: dict[str, Any] = {}
    for label, correct in rows.items():
        cells: dict[str, Any] = {}
        for k in ks:
            per = _strata(correct, benches, k)
            cells[f"pass@{k}"] = {
                b: S.score_cell([list(per[b].values())], num_resamples, seed + k) for b in benches
            }
            cells[f"pass@{k}"]["average"] = S.score_cell(
                [list(per[b].values()) for b in benches], num_resamples, seed + k
            )
        out[label] = cells
    return out


def paired_rows(
    rows: dict[str, dict[str, dict[str, list[bool]]]],
    baseline: str,
    benches: list[str],
    ks: list[int],
    num_resamples: int,
    seed: int,
) -> dict[str, Any]:
    """label → {"pass@k": {bench or "average": paired cell}}: label − baseline over the same problems (base left out)."""
    out: dict[str, Any] = {}
    for label, correct in rows.items():
        if label in (baseline, BASE):
            continue
        cells: dict[str, Any] = {}
        for k in ks:
            mine, theirs = _strata(correct, benches, k), _strata(rows[baseline], benches, k)
            pairs = {b: S.paired(mine[b], theirs[b]) for b in benches}
            cells[f"pass@{k}"] = {
                b: S.paired_cell([pairs[b][0]], num_resamples, seed + k, len(pairs[b][1]))
                for b in benches
            }
            cells[f"pass@{k}"]["average"] = S.paired_cell(
                [pairs[b][0] for b in benches],
                num_resamples,
                seed + k,
                sum(len(pairs[b][1]) for b in benches),
            )
        out[label] = cells
    return out


def table_one(
    rows: dict[str, dict[str, dict[str, list[bool]]]],
    baseline: str,
    benches: list[str],
    ks: list[int],
    num_resamples: int,
    seed: int,
) -> dict[str, Any]:
    """Scores with CIs, and paired differences against the baseline and against base (did training move it?)."""
    return {
        "scores": score_rows(rows, benches, ks, num_resamples, seed),
        "paired_vs_baseline": paired_rows(rows, baseline, benches, ks, num_resamples, seed)
        if baseline in rows
        else {},
        "paired_vs_base": paired_rows(rows, BASE, benches, ks, num_resamples, seed)
        if BASE in rows
        else {},
    }


def _only(
    rows: dict[str, dict[str, dict[str, list[bool]]]], keep: set[str]
) -> dict[str, dict[str, dict[str, list[bool]]]]:
    """`rows` restricted to the problems in `keep` (ids as the evaluations write them)."""
    return {
        label: {b: {p: c for p, c in by.items() if p in keep} for b, by in correct.items()}
        for label, correct in rows.items()
    }


def subset_scores(
    rows: dict[str, dict[str, dict[str, list[bool]]]],
    groups: dict[str, Any],
    baseline: str,
    benches: list[str],
    ks: list[int],
    num_resamples: int,
    seed: int,
) -> dict[str, Any]:
    """Table 1 on the novel-answer subset (with paired differences) and pass@1 per template."""
    out: dict[str, Any] = {}
    novel = groups.get("novel_answer")
    if novel is not None:
        sub = _only(rows, novel)
        out["novel_answer"] = {
            "num_problems": len(novel),
            "of": groups["num_problems"],
            "definition": groups["definition"],
            **table_one(sub, baseline, benches, ks, num_resamples, seed),
        }
    out["per_template"] = {
        t: {
            "num_problems": len(pids),
            "scores": score_rows(_only(rows, pids), benches, [1], num_resamples, seed),
        }
        for t, pids in sorted(groups.get("templates", {}).items())
    }
    return out


def _problem_groups(cfg: Config, runs: list[Any]) -> dict[str, Any]:
    """Held-out built-in problems by template, and those whose gold answer no training problem has.

    A held-out problem "recalls" an answer when a training problem of the same template (any training
    problem, where templates are unknown) has the same normalised gold; the rest are the novel-answer
    subset. Only the built-in benchmark carries templates and is grouped here.
    """
    from palign_ray.benchmarks import BUILTIN, load_benchmark
    from palign_ray.grading import normalize_gold

    e = cfg.eval
    if BUILTIN not in e.benchmarks:
        return {}
    problems_dir = next((r.dirs["problems"] for r in runs if "problems" in r.dirs), None)
    train = _training_answers(problems_dir) if problems_dir is not None else None
    held, _ = load_benchmark(
        BUILTIN, e.data_dir, e.num_problems, e.builtin_seed, builtin_split=e.builtin_split
    )
    template = _builtin_templates(e.num_problems, e.builtin_seed, e.builtin_split)
    groups: dict[str, Any] = {"num_problems": len(held), "templates": {}}
    for row in held:
        groups["templates"].setdefault(template.get(row["problem_id"], "?"), set()).add(
            row["problem_id"]
        )
    if train is not None:
        templated = {(t, a) for t, a in train if t is not None}
        anywhere = {a for _, a in train}
        groups["novel_answer"] = {
            row["problem_id"]
            for row in held
            if (
                (template.get(row["problem_id"]), normalize_gold(row["answer"])) not in templated
                if templated
                else normalize_gold(row["answer"]) not in anywhere
            )
        }
        groups["definition"] = (
            "gold answer not among the training problems' answers of the same template"
            if templated
            else "gold answer not among the training problems' answers"
        )
    return groups


def _training_answers(problems_dir: Path) -> list[tuple[str | None, str]] | None:
    """(template or None, normalised gold) of every training problem, or None before the problems stage ran."""
    import pyarrow.parquet as pq

    from palign_ray.grading import normalize_gold

    stage = StageDir(problems_dir)
    if not stage.manifest_path.exists():
        return None
    out: list[tuple[str | None, str]] = []
    for f in stage.output_files():  # two columns, read file by file
        names = pq.read_schema(f).names
        t = pq.read_table(f, columns=[c for c in ("answer", "template") if c in names]).to_pylist()
        out += [(r.get("template"), normalize_gold(r["answer"])) for r in t]
    return out


def _builtin_templates(num_problems: int, seed: int, split: str) -> dict[str, str]:
    """Evaluation id (`builtin/<id>`) → template of the built-in held-out problems (as benchmarks loads them)."""
    from palign_ray.benchmarks import BUILTIN
    from palign_ray.builtin import builtin_problems

    return {
        f"{BUILTIN}/{r['problem_id']}": r["template"]
        for r in builtin_problems(num_problems or 32, seed, split)  # type: ignore[arg-type]
    }


def _manifest(d: Path) -> dict[str, Any] | None:
    sd = StageDir(d)
    return sd.manifest() if sd.is_done() else None


def _stage_tokens(d: Path) -> dict[str, int] | None:
    from palign_ray.report import summary_tokens

    return summary_tokens(d) if d.is_dir() else None


def _mean_prefix_ratio(d: Path) -> float | None:
    import pyarrow.parquet as pq

    vals: list[float] = []
    for f in StageDir(d).output_files():
        if "prefix_ratio_sentences" in pq.read_schema(f).names:
            vals += [
                v
                for v in pq.read_table(f, columns=["prefix_ratio_sentences"]).column(0).to_pylist()
                if v is not None
            ]
    return sum(vals) / len(vals) if vals else None


def _mean_tokens(samples: list[dict[str, Any]]) -> float | None:
    vals = [s["num_generated_tokens"] for s in samples if s.get("num_generated_tokens") is not None]
    return sum(vals) / len(vals) if vals else None


def method_facts(run: Any, shared_with: dict[str, list[str]]) -> dict[str, Any]:
    """SFT set, prefix ratio, training, cost (tokens computed per stage) and wall time of one method."""
    sft = (
        (_manifest(run.dirs["sft_data"]) or {}).get("summary", {}) if "sft_data" in run.dirs else {}
    )
    train = (_manifest(run.dirs["train"]) or {}).get("metrics", {}) if "train" in run.dirs else {}
    stages: dict[str, Any] = {}
    for stage, d in run.dirs.items():
        m = _manifest(d)
        entry: dict[str, Any] = {
            "dir": str(d),
            "done": m is not None,
            "wall_s": (m or {}).get("wall_s"),
            "shared_with": [x for x in shared_with.get(str(d), []) if x != run.label],
        }
        if stage in ("teacher", "truncate", "align"):
            entry["tokens"] = _stage_tokens(d)
        if stage in ("base_eval", "eval"):
            entry["tokens"] = {
                "generated": _eval_generated(d / (BASE if stage == "base_eval" else "trained"))
            }
        stages[stage] = entry
    computed = sum(
        t.get("prefilled", 0) - t.get("cached", 0) + t.get("generated", 0)
        for s in stages.values()
        if (t := s.get("tokens"))
    )
    ratio = (
        1.0
        if run.cfg.run.method == "full_cot"
        else (_mean_prefix_ratio(run.dirs["truncate"]) if "truncate" in run.dirs else None)
    )
    return {
        "method": run.cfg.run.method,
        "judge_search": run.cfg.judge.search,
        "fixed_ratio": run.cfg.judge.fixed_ratio,
        "sft_examples": sft.get("num_examples"),
        "sft_tokens": sft.get("num_tokens"),
        "sft_loss_tokens": sft.get("num_loss_tokens"),
        "sft_max_response_tokens": sft.get("max_loss_tokens"),
        "mean_prefix_ratio_sentences": ratio,
        "train_steps": train.get("num_steps"),
        "train_final_loss": train.get("final_loss"),
        "tokens_computed": computed,
        "stages": stages,
        # the judge's audit and validity (issue 24): a method whose judge is invalid is no method result
        "judge_audit": (_manifest(run.dirs["truncate"]) or {}).get("judge_audit")
        if "truncate" in run.dirs
        else None,
    }


def _eval_generated(d: Path) -> int:
    p = d / "metrics.json"
    return (
        int(json.loads(p.read_text()).get("timing", {}).get("generated_tokens", 0))
        if p.is_file()
        else 0
    )


def base_consistency(bases: dict[str, dict[str, dict[str, list[bool]]]]) -> dict[str, Any]:
    """Distinct base evaluations (one per base_eval directory; one when the methods share it) must agree sample by sample."""
    labels = list(bases)
    if len(labels) < 2:
        return {"num_evaluations": len(labels), "agree": True, "differing_problems": []}
    ref = bases[labels[0]]
    diff = sorted(
        {
            f"{b}/{pid}"
            for lab in labels[1:]
            for b in set(ref) | set(bases[lab])
            for pid in set(ref.get(b, {})) | set(bases[lab].get(b, {}))
            if ref.get(b, {}).get(pid) != bases[lab].get(b, {}).get(pid)
        }
    )
    return {"num_evaluations": len(labels), "agree": not diff, "differing_problems": diff}


# ---------------------------------------------------------------------------------------------


def write_compare_report(cfg: Config, runs: list[Any], out: Path, baseline: str) -> dict[str, Any]:
    """Collect, compute and write compare.json, report.md and the PNGs; returns compare.json's dict.

    `runs`: palign_ray.compare.MethodRun per method; paired differences are taken against `baseline`.
    """
    n = cfg.eval.num_samples
    trained, bases = {}, {}
    for r in runs:
        if "eval" in r.dirs and (t := _eval_rows(r.dirs["eval"] / "trained")) is not None:
            trained[r.label] = (_correct(t, n), _mean_tokens(t[0]))
        base_dir = r.dirs.get("base_eval")
        if base_dir is not None and str(base_dir) not in bases:  # a shared base_eval counts once
            if (b := _eval_rows(base_dir / BASE)) is not None:
                bases[str(base_dir)] = (_correct(b, n), _mean_tokens(b[0]))
    rows = ({BASE: next(iter(bases.values()))[0]} if bases else {}) | {
        m: c for m, (c, _) in trained.items()
    }
    lengths = ({BASE: next(iter(bases.values()))[1]} if bases else {}) | {
        m: ln for m, (_, ln) in trained.items()
    }
    benches = sorted({b for c in rows.values() for b in c})
    ks = _ks(list(rows.values()))
    nb, seed = cfg.eval.bootstrap_samples, cfg.run.seed
    shared: dict[str, list[str]] = {}
    for r in runs:
        for d in r.dirs.values():
            shared.setdefault(str(d), []).append(r.label)
    result: dict[str, Any] = {
        "run_dir": cfg.run.run_dir,
        "methods": [r.label for r in runs],
        "benchmarks": benches,
        "ks": ks,
        "baseline": baseline,
        "eval": {
            "num_samples": n,
            "num_problems": cfg.eval.num_problems,
            "seed": seed,
            "temperature": cfg.eval.temperature,
            "top_p": cfg.eval.top_p,
            "max_tokens": cfg.eval.max_tokens,
        },
        **table_one(rows, baseline, benches, ks, nb, seed),
        "mean_response_tokens": lengths,
        "subsets": subset_scores(rows, _problem_groups(cfg, runs), baseline, benches, ks, nb, seed),
        "base_consistency": base_consistency({m: c for m, (c, _) in bases.items()}),
        "facts": {r.label: method_facts(r, shared) for r in runs},
        "report": str(out / "report.md"),
    }
    write_json(out / "compare.json", result)
    write_table_samples(runs, out, n)
    _plots(result, out)
    (out / "report.md").write_text(render_markdown(result))
    log.info("wrote %s", out / "report.md")
    return result


def write_table_samples(runs: list[Any], out: Path, num_samples: int) -> Path:
    """`out/samples.parquet`: every sample Table 1 scores, one evaluation read at a time.

    The base rows come from the first finished base_eval, the one the table shows.
    """
    from palign_ray.compare_samples import write_samples

    base = next(
        (
            d / BASE
            for r in runs
            if (d := r.dirs.get("base_eval")) is not None and (d / BASE / ".done").is_file()
        ),
        None,
    )
    sources = [(BASE, base)] if base is not None else []
    sources += [(r.label, r.dirs["eval"] / "trained") for r in runs if "eval" in r.dirs]
    evaluations = ((m, rows) for m, d in sources if (rows := _eval_rows(d)) is not None)
    write_samples(out / "samples.parquet", evaluations, num_samples)
    return out / "samples.parquet"


def _pct(x: Any) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def _cell(c: dict[str, Any] | None) -> str:
    if not c or c.get("num_problems", 0) == 0:
        return "—"
    lo, hi = c["ci95"]
    return f"{_pct(c['value'])} [{_pct(lo)}, {_pct(hi)}]"


def _pcell(c: dict[str, Any] | None) -> str:
    if not c or c.get("num_problems", 0) == 0:
        return "—"
    lo, hi = c["ci95"]
    sign = "+" if c["diff"] > 0 else ""
    return f"{sign}{_pct(c['diff'])} [{_pct(lo)}, {_pct(hi)}] p{_p(c['p_permutation'])} ({c['wins']}/{c['losses']}/{c['ties']})"


def _p(p: float) -> str:
    """`=0.0123`, or `< 0.001` where a resampled p sits at its floor (1/(resamples+1)) or below."""
    return " < 0.001" if p < 0.001 else f"={p:.3g}"


def _num(x: Any, fmt: str = "{:,.0f}") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def render_markdown(res: dict[str, Any]) -> str:
    benches, ks = res["benchmarks"], res["ks"]
    cols = [*benches, "average"]
    lines = [
        f"# Method comparison: `{res['run_dir']}`",
        "",
        f"Methods: {', '.join(res['methods'])}; evaluation: {res['eval']['num_samples']} samples per problem, "
        f"temperature {res['eval']['temperature']}, top_p {res['eval']['top_p']}, seed {res['eval']['seed']} "
        "(the same for every row). Values in percent, [95% bootstrap CI over problems]; the average is the macro "
        "average over benchmarks (problems resampled within their benchmark).",
        "",
    ]
    for k in ks:
        lines += [
            f"## Table 1: pass@{k}"
            + (" (mean accuracy over samples, the paper's Pass@1)" if k == 1 else ""),
            "",
            "| | " + " | ".join(cols) + " |",
            "|---" * (len(cols) + 1) + "|",
        ]
        for label, cells in res["scores"].items():
            lines.append(
                f"| {_marked(res, label)} | "
                + " | ".join(_cell(cells[f"pass@{k}"].get(c)) for c in cols)
                + " |"
            )
        lines.append("")
    lines += _paired_lines(res["paired_vs_baseline"], res["baseline"], ks, cols)
    lines += _paired_lines(res["paired_vs_base"], BASE, ks, cols)
    lines += _subset_lines(res, ks, cols)
    lines += _judge_lines(res)
    lines += _facts_lines(res)
    lines += [
        "## Base student",
        "",
        _base_line(res["base_consistency"]),
        "",
        "![scores](scores.png)",
        "",
        "![length vs accuracy](length_vs_accuracy.png)",
        "",
    ]
    return "\n".join(lines)


def _table_lines(res: dict[str, Any], scores: dict[str, Any], k: int, cols: list[str]) -> list[str]:
    lines = ["| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for label, cells in scores.items():
        lines.append(
            f"| {_marked(res, label)} | "
            + " | ".join(_cell(cells[f"pass@{k}"].get(c)) for c in cols)
            + " |"
        )
    return [*lines, ""]


def _subset_lines(res: dict[str, Any], ks: list[int], cols: list[str]) -> list[str]:
    """Table 1 on the novel-answer subset (and its paired differences), then pass@1 per template."""
    sub = res.get("subsets") or {}
    lines: list[str] = []
    if novel := sub.get("novel_answer"):
        lines += [
            f"## Table 1 on the novel-answer subset ({novel['num_problems']} of {novel['of']} "
            f"held-out problems: {novel['definition']})",
            "",
            "A gain here is a procedure learned, not an answer recalled from training.",
            "",
        ]
        for k in ks:
            lines += [f"### pass@{k}", "", *_table_lines(res, novel["scores"], k, cols)]
        for paired, against in (
            (novel["paired_vs_baseline"], res["baseline"]),
            (novel["paired_vs_base"], BASE),
        ):
            lines += [
                line.replace("## Paired", "### Novel-answer subset: paired", 1)
                for line in _paired_lines(paired, against, ks, cols)
            ]
    if per := sub.get("per_template"):
        labels = list(res["scores"])
        lines += [
            "## pass@1 per template (average over benchmarks, [95% bootstrap CI])",
            "",
            "| template (problems) | " + " | ".join(_marked(res, x) for x in labels) + " |",
            "|---" * (len(labels) + 1) + "|",
        ]
        for t, g in per.items():
            cells = [
                _cell((g["scores"].get(x) or {}).get("pass@1", {}).get("average")) for x in labels
            ]
            lines.append(f"| {t} ({g['num_problems']}) | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _marked(res: dict[str, Any], label: str) -> str:
    """The row label, with "(judge invalid)" / "(judge unmeasured)" where the method's judge is not valid."""
    from palign_ray.judge.measure import status_label

    status = status_label((res["facts"].get(label) or {}).get("judge_audit"))
    return f"{label} ({status})" if status and status != "judge valid" else label


def _judge_lines(res: dict[str, Any]) -> list[str]:
    """Each judged method's audit and validity (judge.measure), beside its Table-1 row."""
    from palign_ray.judge.measure import status_label

    judged = {
        label: f["judge_audit"]
        for label, f in res["facts"].items()
        if f.get("judge_audit") and status_label(f["judge_audit"])
    }
    if not judged:
        return []
    head = "| method | judge | solved from cut | full trace | empty | cut − empty | one sentence less fails | whole / first (%) | known-cut exact | AUC |"
    lines = ["## Judge audit per method", "", head, "|---" * 10 + "|"]
    for label, m in judged.items():
        a, c, k = m.get("audit") or {}, m["cuts"], m.get("known_cut") or {}
        d = a.get("cut_minus_empty")
        cells = [
            label,
            status_label(m),
            _rate_cell(a.get("cut")),
            _rate_cell(a.get("full")),
            _rate_cell(a.get("empty")),
            f"{d['diff']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]" if d else "–",
            _rate_cell(a.get("minimal")),
            f"{_pct(c.get('share_full'))} / {_pct(c.get('share_first'))}",
            _rate_cell((k.get("cuts") or {}).get("judge", {}).get("exact")),
            _rate_cell(k.get("auc")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for label, m in judged.items():
        lines += [f"- {label}: {r}" for r in m["validity"].get("reasons", [])]
    return [*lines, "", f"Rule: {next(iter(judged.values()))['validity']['rule']}.", ""]


def _rate_cell(c: dict[str, Any] | None) -> str:
    if not c:
        return "–"
    lo, hi = c["ci95"]
    return f"{c['value']:.2f} [{lo:.2f}, {hi:.2f}]"


def headline_lines(res: dict[str, Any]) -> list[str]:
    """One console line per row of Table 1: the average over benchmarks, pass@1 and the largest k, with CIs."""
    ks = sorted({1, max(res["ks"] or [1])})
    return [
        f"{_marked(res, label):<16}"
        + " · ".join(f"pass@{k} {_cell(cells[f'pass@{k}'].get('average'))}" for k in ks)
        for label, cells in res["scores"].items()
    ]


def _base_line(bc: dict[str, Any]) -> str:
    n, diff = bc["num_evaluations"], bc["differing_problems"]
    if n <= 1:
        return "The base student was evaluated once, in the base_eval stage the methods share."
    return f"The base student was evaluated {n} times (base_eval differs between methods); " + (
        "they agree sample by sample."
        if bc["agree"]
        else f"they DIFFER on {len(diff)} problems ({', '.join(diff[:10])}); the table shows the first."
    )


def _paired_lines(
    paired: dict[str, Any], against: str, ks: list[int], cols: list[str]
) -> list[str]:
    if not paired:
        return []
    lines = [
        f"## Paired differences against `{against}` (same problems)",
        "",
        "Δ in points [95% bootstrap CI], two-sided sign-flip permutation p, (wins/losses/ties over problems); "
        "compare.json also has the sign-test p.",
        "",
    ]
    for k in ks:
        lines += [
            f"### pass@{k}",
            "",
            "| | " + " | ".join(cols) + " |",
            "|---" * (len(cols) + 1) + "|",
        ]
        for label, cells in paired.items():
            lines.append(
                f"| {label} − {against} | "
                + " | ".join(_pcell(cells[f"pass@{k}"].get(c)) for c in cols)
                + " |"
            )
        lines.append("")
    return lines


def _facts_lines(res: dict[str, Any]) -> list[str]:
    head = [
        "method",
        "SFT examples",
        "SFT tokens (loss)",
        "mean prefix ratio",
        "mean response tokens",
        "longest trained response",
        "train steps",
        "final loss",
        "tokens computed (all its stages)",
    ]
    lines = [
        "## Data, length and cost per method",
        "",
        "| " + " | ".join(head) + " |",
        "|---" * len(head) + "|",
    ]
    for label, f in res["facts"].items():
        cells = [
            label,
            _num(f["sft_examples"]),
            f"{_num(f['sft_tokens'])} ({_num(f['sft_loss_tokens'])})",
            _num(f["mean_prefix_ratio_sentences"], "{:.3f}"),
            _num(res["mean_response_tokens"].get(label), "{:.1f}"),
            _num(f.get("sft_max_response_tokens")),
            _num(f["train_steps"]),
            _num(f["train_final_loss"], "{:.4f}"),
            _num(f["tokens_computed"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", _room_line(res)]
    lines += [
        "",
        f"Base student mean response tokens: {_num(res['mean_response_tokens'].get(BASE), '{:.1f}')}. "
        "Tokens computed = prefill not served from the prefix cache + generated, summed over the method's stages "
        "(shared stages count in full for every method that uses them, base_eval included). Prefix ratio: kept sentences / trace sentences in truncate's output (full_cot: 1).",
        "",
        "### Stages per method (wall s; shared stages ran once)",
        "",
        "| method | " + " | ".join(s for s in _all_stages(res)) + " |",
        "|---" * (len(_all_stages(res)) + 1) + "|",
    ]
    for label, f in res["facts"].items():
        cells = []
        for s in _all_stages(res):
            e = f["stages"].get(s)
            if e is None:
                cells.append("skipped")
                continue
            wall = _num(e["wall_s"], "{:.1f}") if e["done"] else "not done"
            cells.append(
                wall + (f" (shared: {', '.join(e['shared_with'])})" if e["shared_with"] else "")
            )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _room_line(res: dict[str, Any]) -> str:
    """Whether evaluation left room for the longest response any arm was trained on (+32 tokens)."""
    longest = max((f.get("sft_max_response_tokens") or 0 for f in res["facts"].values()), default=0)
    room = res["eval"].get("max_tokens")
    if not longest or room is None:
        return "Longest trained response: not known (sft_data has not run or predates the count)."
    verdict = (
        "enough" if room >= longest + 32 else "TOO SHORT: trained answers are cut at evaluation"
    )
    return f"eval.max_tokens {room} against the longest trained response {longest} tokens + 32: {verdict}."


def _all_stages(res: dict[str, Any]) -> list[str]:
    from palign_ray.pipeline import STAGE_NAMES

    present = {s for f in res["facts"].values() for s in f["stages"]}
    return [s for s in STAGE_NAMES if s in present]


def _bar_values(cells: list[dict[str, Any] | None]) -> tuple[list[float], list[list[float]]]:
    """Bar heights and (below, above) whisker lengths in percent; a missing cell is a gap."""
    vals, below, above = [], [], []
    for c in cells:
        v = 100 * c["value"] if c and c.get("num_problems") else float("nan")
        lo, hi = (100 * x for x in c["ci95"]) if c and c.get("num_problems") else (v, v)
        vals.append(v)
        below.append(max(0.0, v - lo) if v == v else 0.0)
        above.append(max(0.0, hi - v) if v == v else 0.0)
    return vals, [below, above]


def _plots(res: dict[str, Any], out: Path) -> None:
    from palign_ray.report_plots import _pyplot

    if not res["scores"]:
        return
    plt = _pyplot()
    cols = [*res["benchmarks"], "average"]
    labels = list(res["scores"])
    fig, axes = plt.subplots(1, len(res["ks"]), figsize=(5 * len(res["ks"]) + 1, 4), squeeze=False)
    width = 0.8 / max(1, len(labels))
    for ax, k in zip(axes[0], res["ks"], strict=True):
        for i, label in enumerate(labels):
            vals, err = _bar_values([res["scores"][label][f"pass@{k}"].get(c) for c in cols])
            ax.bar(
                [j + i * width for j in range(len(cols))],
                vals,
                width,
                yerr=err,
                capsize=3,
                label=label,
            )
        ax.set_xticks(
            [j + width * (len(labels) - 1) / 2 for j in range(len(cols))], cols, fontsize=8
        )
        ax.set_ylabel(f"pass@{k} (%)")
        ax.set_title(f"pass@{k} with 95% bootstrap CI")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "scores.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 4))
    for label in labels:
        x, cell = res["mean_response_tokens"].get(label), res["scores"][label]["pass@1"]["average"]
        if x is not None:
            lo, hi = cell["ci95"]
            ax.errorbar(
                [x],
                [100 * cell["value"]],
                yerr=[[100 * (cell["value"] - lo)], [100 * (hi - cell["value"])]],
                fmt="o",
                capsize=3,
                label=label,
            )
    ax.set_xlabel("mean response length (tokens)")
    ax.set_ylabel("average pass@1 (%)")
    ax.set_title("length vs accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "length_vs_accuracy.png", dpi=100)
    plt.close(fig)
