"""report.md of a `palign compare` run (Table-1 layout) and the console's headline lines; "—" where nothing ran yet."""

from __future__ import annotations

import math
from typing import Any

from palign_ray.compare.table import BASE


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
