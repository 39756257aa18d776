"""How good are the judge's cuts: the audit's rates, known-cut metrics beside trivial cuts, and the validity rule.

Pure: takes a compact record per judged problem (see `compact`) and returns plain dicts that go into
the truncate manifest (`judge_audit`), the console, `report.md` and the compare report. Every rate
comes with a 95% percentile-bootstrap CI over problems (the samples of one problem move together).

The validity rule (README, "Is the judge valid?"). A judge is invalid when any of these holds:
  1. audit: the per-problem accuracy at the cut is not above the empty prefix's beyond the CI
     (the paired difference's 95% CI does not exclude 0);
  2. degenerate cuts: more than DEGENERATE_SHARE of the multi-sentence traces keep the whole trace,
     or more than DEGENERATE_SHARE are cut at sentence 1;
  3. known cuts: the 95% CI of the verdict score's ROC-AUC against "the prefix reaches the known
     cut" does not lie above 0.5 (it contains chance, or lies below it: a judge whose scores rank
     the known cut backwards, as the embedded default's did at AUC 0.31 [0.19, 0.44] on 2026-12-05,
     is no better for being "significant").
It is valid when at least one of 1 and 3 was measured and none holds; otherwise unmeasured.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from palign_ray.compare import stats as S
from palign_ray.judge.audit import ARMS, AUDIT, KNOWN_CUT

# Shares of cuts at the whole trace / at sentence 1 above which the cuts are degenerate. The value of
# the degeneracy warning (judge.calibration.degeneracy), fixed before any audit ran and not tuned on
# one: a judge whose cuts are (nearly) all trivial does no judging, whatever its audit says.
DEGENERATE_SHARE = 0.8
MIN_DEGENERATE_TRACES = 5  # fewer multi-sentence traces say nothing about a share
NUM_RESAMPLES = 1000
MAX_AUC_WORK = 2_000_000  # bootstrap resamples x probes; beyond it fewer resamples (>= 100)


def compact(row: Mapping[str, Any]) -> dict[str, Any]:
    """What the measures need from one truncate row (probes: (k, score, verdict) of the search probes)."""
    known = row.get(KNOWN_CUT)
    known = int(known) if known is not None and int(known) > 0 else -1
    probes = [  # only where a known cut labels them (the driver keeps no probes it cannot use)
        (int(p["k"]), p.get("score"), bool(p["verdict"]))
        for p in (row.get("probe_trace") or [] if known > 0 else [])
        if not p.get("anchor")
    ]
    return {
        "prefix_sentences": int(row["prefix_sentences"]),
        "num_sentences": int(row["num_sentences"]),
        "prefix_ratio_sentences": float(row["prefix_ratio_sentences"]),
        KNOWN_CUT: known,
        AUDIT: row.get(AUDIT),
        "probes": probes,
    }


def judge_measurement(
    recs: Sequence[Mapping[str, Any]],
    *,
    judged: bool,
    fixed_ratio: float,
    seed: int = 0,
    audit_note: str = "",
) -> dict[str, Any]:
    """The manifest's `judge_audit`: cuts, audit, known-cut metrics and validity.

    `audit_note`: why the run has no audit (judge.audit.audit_off_reason), shown where the audit would be.
    """
    cuts = cut_summary(recs)
    audit = audit_summary([r[AUDIT] for r in recs if r.get(AUDIT)], seed)
    known = known_cut_summary(recs, fixed_ratio, seed)
    verdict = (
        validity(audit, cuts, known)
        if judged
        else {"status": "no judge", "reasons": [], "rule": RULE}
    )
    if audit is None:
        verdict["audit_note"] = audit_note or "no audited problem had a gold answer"
    return {"cuts": cuts, "audit": audit, "known_cut": known, "validity": verdict}


# ---- cuts ------------------------------------------------------------------------------------------


def cut_summary(recs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Prefix-ratio distribution and the shares of trivial cuts (among traces of more than one sentence)."""
    from palign_ray.judge.summary import quantiles

    multi = [r for r in recs if r["num_sentences"] > 1]
    full = sum(r["prefix_sentences"] >= r["num_sentences"] for r in multi)
    first = sum(r["prefix_sentences"] == 1 for r in multi)
    return {
        "num_problems": len(recs),
        "num_multi_sentence": len(multi),
        "share_full": full / len(multi) if multi else float("nan"),
        "share_first": first / len(multi) if multi else float("nan"),
        "prefix_ratio": quantiles([r["prefix_ratio_sentences"] for r in recs]),
    }


# ---- audit -----------------------------------------------------------------------------------------


def audit_summary(audits: Sequence[Mapping[str, Any]], seed: int = 0) -> dict[str, Any] | None:
    """Per-arm accuracy, cut − empty and cut − shorter paired differences, minimality; None without audits."""
    audits = [a for a in audits if a and int(a.get("samples") or 0) > 0]
    if not audits:
        return None
    rate = {arm: [int(a[f"correct_{arm}"]) / int(a["samples"]) for a in audits] for arm in ARMS}
    out: dict[str, Any] = {
        "num_problems": len(audits),
        "samples": int(audits[0]["samples"]),
    }
    for i, arm in enumerate(ARMS):
        out[arm] = S.score_cell([rate[arm]], NUM_RESAMPLES, seed + i)
    for other in ("empty", "shorter", "full"):
        diffs = [c - o for c, o in zip(rate["cut"], rate[other], strict=True)]
        out[f"cut_minus_{other}"] = S.paired_cell([diffs], NUM_RESAMPLES, seed, 0)
    shorter_fails = [float(a["correct_shorter"] == 0) for a in audits]
    out["minimal"] = S.score_cell([shorter_fails], NUM_RESAMPLES, seed + 7)
    both = [float(a["correct_cut"] > 0 and a["correct_shorter"] == 0) for a in audits]
    out["sufficient_and_minimal"] = S.score_cell([both], NUM_RESAMPLES, seed + 8)
    out["errors"] = sum(int(a.get("errors") or 0) for a in audits)
    out["prompt_tokens"] = sum(int(a.get("prompt_tokens") or 0) for a in audits)
    out["generated_tokens"] = sum(int(a.get("generated_tokens") or 0) for a in audits)
    return out


# ---- known cuts ------------------------------------------------------------------------------------


def cut_errors(ks: Sequence[int], known: Sequence[int], seed: int) -> dict[str, Any]:
    """exact / within ±1 / too early / too late shares of cuts `ks` against the known cuts, with CIs."""
    err = [k - c for k, c in zip(ks, known, strict=True)]
    tests = {
        "exact": lambda e: e == 0,
        "within_1": lambda e: abs(e) <= 1,
        "early": lambda e: e < 0,
        "late": lambda e: e > 0,
    }
    return {
        name: S.score_cell([[float(t(e)) for e in err]], NUM_RESAMPLES, seed)
        for name, t in tests.items()
    }


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks; tied values share the mean rank of their block."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for t in range(i, j + 1):
            ranks[order[t]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney); nan without both."""
    pos = sum(labels)
    neg = len(labels) - pos
    if not pos or not neg:
        return float("nan")
    rank_pos = sum(r for r, y in zip(average_ranks(scores), labels, strict=True) if y)
    return (rank_pos - pos * (pos + 1) / 2) / (pos * neg)


def auc_cell(groups: Sequence[Sequence[tuple[float, bool]]], seed: int) -> dict[str, Any]:
    """ROC-AUC of (score, label) pairs pooled over problems, with a bootstrap CI over problems."""
    flat = [x for g in groups for x in g]
    value = roc_auc([s for s, _ in flat], [y for _, y in flat])
    n = max(100, min(NUM_RESAMPLES, MAX_AUC_WORK // max(1, len(flat))))
    rng = random.Random(seed)
    stats = []
    for _ in range(n if groups else 0):
        pick = [x for _ in groups for x in groups[rng.randrange(len(groups))]]
        a = roc_auc([s for s, _ in pick], [y for _, y in pick])
        if not math.isnan(a):
            stats.append(a)
    stats.sort()
    ci = (
        [stats[int(0.025 * (len(stats) - 1))], stats[int(0.975 * (len(stats) - 1))]]
        if stats
        else [float("nan"), float("nan")]
    )
    return {"value": value, "ci95": ci, "num_probes": len(flat), "num_problems": len(groups)}


def known_cut_summary(
    recs: Sequence[Mapping[str, Any]], fixed_ratio: float, seed: int = 0
) -> dict[str, Any] | None:
    """The judge's cuts and trivial cuts against the known ones, and the verdict score's AUC; None without known cuts."""
    from palign_ray.judge.search import fixed_ratio_k

    known = [r for r in recs if r[KNOWN_CUT] > 0]
    if not known:
        return None
    truth = [min(r[KNOWN_CUT], r["num_sentences"]) for r in known]
    n = [r["num_sentences"] for r in known]
    cuts = {
        "judge": [r["prefix_sentences"] for r in known],
        "always_full": n,
        "always_first": [1] * len(known),
        f"fixed_ratio_{fixed_ratio:g}": [fixed_ratio_k(x, fixed_ratio) for x in n],
    }
    scored = [
        [
            (float(v) if s is None else float(s), k >= c)
            for k, s, v in r["probes"]
            if s is not None or v is not None
        ]
        for r, c in zip(known, truth, strict=True)
    ]
    position = [
        [(k / r["num_sentences"], k >= c) for k, _, _ in r["probes"]]
        for r, c in zip(known, truth, strict=True)
    ]
    return {
        "num_problems": len(known),
        "known_ratio": sum(c / x for c, x in zip(truth, n, strict=True)) / len(known),
        "cuts": {name: cut_errors(ks, truth, seed) for name, ks in cuts.items()},
        "auc": auc_cell([g for g in scored if g], seed),
        # a judge-free score: the probe's position in the trace (later prefixes are more often sufficient)
        "auc_position": auc_cell([g for g in position if g], seed),
    }


# ---- validity --------------------------------------------------------------------------------------

RULE = (
    "invalid when the cut's audit accuracy is not above the empty prefix's beyond the 95% CI, when more "
    f"than {DEGENERATE_SHARE:.0%} of cuts keep the whole trace or cut at sentence 1, or when the 95% CI "
    "of the verdict score's AUC against known cuts does not lie above 0.5"
)


def validity(
    audit: Mapping[str, Any] | None, cuts: Mapping[str, Any], known: Mapping[str, Any] | None
) -> dict[str, Any]:
    """{"status": valid | invalid | unmeasured, "reasons": [...], "rule": RULE}."""
    reasons: list[str] = []
    measured = False
    if audit:
        d = audit["cut_minus_empty"]
        lo, hi = d["ci95"]
        if not math.isnan(lo):
            measured = True
            if not lo > 0:
                reasons.append(
                    f"audit: accuracy at the cut {_rate(audit['cut'])} is not above the empty prefix's "
                    f"{_rate(audit['empty'])} (paired difference {d['diff']:+.3f}, 95% CI "
                    f"[{lo:+.3f}, {hi:+.3f}], {audit['num_problems']} problems)"
                )
    if cuts["num_multi_sentence"] >= MIN_DEGENERATE_TRACES:
        for key, what in (
            ("share_full", "keep the whole trace"),
            ("share_first", "cut at sentence 1"),
        ):
            if cuts[key] > DEGENERATE_SHARE:
                reasons.append(
                    f"degenerate: {cuts[key]:.0%} of {cuts['num_multi_sentence']} cuts {what}"
                )
    if known and not math.isnan(known["auc"]["value"]):
        lo, hi = known["auc"]["ci95"]
        measured = True
        if not lo > 0.5 or math.isnan(lo):
            reasons.append(
                f"known cuts: verdict-score AUC {known['auc']['value']:.2f} [{lo:.2f}, {hi:.2f}] "
                + ("is below chance (0.5)" if hi < 0.5 else "cannot be told from chance (0.5)")
            )
    status = "invalid" if reasons else ("valid" if measured else "unmeasured")
    return {"status": status, "reasons": reasons, "rule": RULE}


# ---- one-line views ----------------------------------------------------------------------------------


def _rate(cell: Mapping[str, Any]) -> str:
    lo, hi = cell["ci95"]
    return f"{cell['value']:.2f} [{lo:.2f}, {hi:.2f}]"


def audit_line(m: Mapping[str, Any]) -> str:
    """The console's audit line: sufficiency against ceiling and floor, minimality, known-cut exactness."""
    parts = []
    a = m.get("audit")
    if a:
        parts.append(
            f"audit of {a['num_problems']} problems × {a['samples']}: solved from the cut "
            f"{_rate(a['cut'])}, full trace {_rate(a['full'])}, empty {_rate(a['empty'])}; "
            f"one sentence less fails {_rate(a['minimal'])}"
        )
    k = m.get("known_cut")
    if k:
        j = k["cuts"]["judge"]
        auc = k["auc"]["value"]
        parts.append(
            f"known cuts ({k['num_problems']}): exact {_rate(j['exact'])}, ±1 {_rate(j['within_1'])}, "
            + ("AUC undefined (probes on one side)" if math.isnan(auc) else f"AUC {auc:.2f}")
        )
    c = m.get("cuts") or {}
    if c.get("num_problems"):
        parts.append(
            f"cuts: {c['share_full']:.0%} whole trace, {c['share_first']:.0%} at sentence 1, "
            f"median ratio {c['prefix_ratio'].get('p50', float('nan')):.2f}"
        )
    return "; ".join(parts) or "no cuts measured"


def records_of(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [compact(r) for r in rows]


def measure_stage_dir(
    sd: Any, *, judged: bool, fixed_ratio: float, seed: int, audit_note: str = ""
) -> dict[str, Any]:
    """`judge_measurement` over a truncate stage's committed parts, one file at a time and only the
    columns it needs (never the traces or the audit texts)."""
    import pyarrow.parquet as pq

    cols = (
        "prefix_sentences",
        "num_sentences",
        "prefix_ratio_sentences",
        KNOWN_CUT,
        AUDIT,
        "probe_trace",
    )
    recs: list[dict[str, Any]] = []
    for f in sd.output_files():
        names = set(pq.read_schema(f).names)
        table = pq.read_table(f, columns=[c for c in cols if c in names])
        recs += [compact(r) for r in table.to_pylist()]
    return judge_measurement(
        recs, judged=judged, fixed_ratio=fixed_ratio, seed=seed, audit_note=audit_note
    )


def status_label(m: Mapping[str, Any] | None) -> str:
    """'judge valid' / 'judge invalid' / 'judge unmeasured' / '' (no judge), for tables."""
    status = ((m or {}).get("validity") or {}).get("status", "")
    return "" if status in ("", "no judge") else f"judge {status}"


def audit_markdown(m: Mapping[str, Any]) -> list[str]:
    """The report's judge section: validity first, then the audit, the known cuts and the cut shares."""
    verdict = m.get("validity") or {}
    lines = [f"**{status_label(m) or 'no judge'}**"]
    lines += [f"- {r}" for r in verdict.get("reasons", [])]
    lines += ["", f"Rule: {verdict.get('rule', RULE)}.", ""]
    a = m.get("audit")
    if not a:
        lines += [f"No audit: {verdict.get('audit_note', '')}.", ""]
    if a:
        lines += [
            f"Audit: {a['num_problems']} problems (seeded sample), {a['samples']} continuations per "
            "prefix, the align stage's prompt, sampling and grader. Rate = share of continuations "
            "reaching the gold answer, mean over problems, 95% bootstrap CI.",
            "",
            "| prefix | solved |",
            "|---|---|",
            *[f"| {arm} | {_rate(a[arm])} |" for arm in ARMS],
            "",
            f"- cut − empty (paired): {_diff(a['cut_minus_empty'])}; cut − one sentence less: "
            f"{_diff(a['cut_minus_shorter'])}; cut − full: {_diff(a['cut_minus_full'])}",
            f"- minimal (one sentence less solves none): {_rate(a['minimal'])}; sufficient and minimal: "
            f"{_rate(a['sufficient_and_minimal'])}",
            f"- audit cost: {a['prompt_tokens']:,} prompt tokens computed, {a['generated_tokens']:,} "
            "generated (not counted in the judge's own tokens)",
            "",
        ]
    k = m.get("known_cut")
    if k:
        lines += [
            f"Known cuts: {k['num_problems']} traces (mean known cut at {k['known_ratio']:.2f} of the "
            "trace). Shares of cuts against the known shortest sufficient prefix, trivial cuts beside:",
            "",
            "| cut | exact | ±1 | too early | too late |",
            "|---|---|---|---|---|",
            *[
                f"| {name} | "
                + " | ".join(_rate(c[x]) for x in ("exact", "within_1", "early", "late"))
                + " |"
                for name, c in k["cuts"].items()
            ],
            "",
            f"- ROC-AUC of the verdict score against 'the prefix reaches the known cut': "
            f"{_auc(k['auc'])}; the probe's position in the trace as the score: {_auc(k['auc_position'])}",
            "",
        ]
    c = m.get("cuts") or {}
    if c.get("num_problems"):
        q = c.get("prefix_ratio") or {}
        lines += [
            f"Cuts: {c['num_problems']} problems; {c['share_full']:.0%} keep the whole trace, "
            f"{c['share_first']:.0%} are at sentence 1 (of {c['num_multi_sentence']} multi-sentence "
            f"traces); prefix ratio p10 {q.get('p10', float('nan')):.2f}, median "
            f"{q.get('p50', float('nan')):.2f}, p90 {q.get('p90', float('nan')):.2f}.",
            "",
        ]
    return lines


def _diff(cell: Mapping[str, Any]) -> str:
    lo, hi = cell["ci95"]
    return f"{cell['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def _auc(cell: Mapping[str, Any]) -> str:
    if math.isnan(cell["value"]):  # every probe on one side of the known cut: nothing to rank
        return f"undefined ({cell['num_probes']} probes, all on one side of the known cut)"
    lo, hi = cell["ci95"]
    return f"{cell['value']:.2f} [{lo:.2f}, {hi:.2f}] ({cell['num_probes']} probes)"
