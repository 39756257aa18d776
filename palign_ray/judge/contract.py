"""The truncate stage's contract: its output columns and schema, the judge settings it accepts, and the
input checks that need no model (ids, question and CoT present)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from palign_ray import records as R
from palign_ray.artifacts import quarantine_row
from palign_ray.config import JudgeConfig
from palign_ray.judge.audit import AUDIT, AUDIT_ROLLOUTS, KNOWN_CUT, audit_schema
from palign_ray.judge.calibration import CALIBRATIONS
from palign_ray.judge.rollout import ROLLOUT_CONTINUATIONS, ROLLOUT_K

STAGE = "truncate"

TRACE_SOURCE = R.TRACE_SOURCE  # the teacher stage's column: teacher | reference | ingested

DECISIVE_SENTENCE = (
    R.DECISIVE_SENTENCE
)  # built-in traces: the known cut's column (judge.known_cut_field)

KNOWN_CHAR_END = R.DECISIVE_CHAR_END  # and where that sentence ends, checked against the splitter

KNOWN_INDEX = "known_index"  # checked input rows: judge.known_cut_field's value (0-based sentence)

OUTPUT_COLUMNS: tuple[str, ...] = (
    R.PROBLEM_ID,
    R.QUESTION,
    R.ANSWER,
    R.COT,
    "num_sentences",
    "num_judged_sentences",
    "prefix_sentences",
    "prefix_char_end",
    "prefix_ratio_sentences",
    "prefix_ratio_chars",
    R.PREFIX,
    "is_sufficient",
    "non_monotone",
    "search",
    "verdict_mode",
    "calibration",
    "threshold",
    "segmentation",
    "judge_model",
    "prompt_version",
    "num_probes",
    "num_rounds",
    "prompt_tokens",
    "cached_tokens",
    "generated_tokens",
    "num_unparseable",
    "num_judge_errors",
    "cot_truncated",
    "isotonic",
    "calibration_status",
    "calibration_m0",
    "calibration_mn",
    "num_calibration_probes",
    "num_contradictions",
    "probe_trace",
    KNOWN_CUT,
    AUDIT,
    AUDIT_ROLLOUTS,
    ROLLOUT_K,
    ROLLOUT_CONTINUATIONS,
)


def output_schema() -> Any:
    """Arrow schema of the output Parquet (the column names and types are a contract)."""
    import pyarrow as pa

    probe = pa.struct(
        [
            ("round", pa.int32()),
            ("k", pa.int32()),
            ("verdict", pa.bool_()),
            ("p_enough", pa.float64()),
            ("logprob_enough", pa.float64()),
            ("logprob_not_enough", pa.float64()),
            ("score", pa.float64()),
            ("anchor", pa.bool_()),
            ("votes", pa.list_(pa.bool_())),
            ("parseable", pa.bool_()),
            ("error", pa.string()),
            ("prompt_tokens", pa.int32()),
            ("cached_tokens", pa.int32()),
            ("generated_tokens", pa.int32()),
            ("raw", pa.string()),
        ]
    )
    s, i, f, b = pa.string(), pa.int32(), pa.float64(), pa.bool_()
    audit, rollouts = audit_schema()
    types = {
        "num_sentences": i,
        "num_judged_sentences": i,
        "prefix_sentences": i,
        "prefix_char_end": i,
        "prefix_ratio_sentences": f,
        "prefix_ratio_chars": f,
        "is_sufficient": b,
        "non_monotone": b,
        "threshold": f,
        "num_probes": i,
        "num_rounds": i,
        "prompt_tokens": pa.int64(),
        "cached_tokens": pa.int64(),
        "generated_tokens": pa.int64(),
        "num_unparseable": i,
        "num_judge_errors": i,
        "cot_truncated": b,
        "isotonic": b,
        "calibration_m0": f,
        "calibration_mn": f,
        "num_calibration_probes": i,
        "num_contradictions": i,
        "probe_trace": pa.list_(probe),
        KNOWN_CUT: i,
        AUDIT: audit,
        AUDIT_ROLLOUTS: rollouts,
        ROLLOUT_K: i,
        ROLLOUT_CONTINUATIONS: rollouts,
    }
    return pa.schema([(c, types.get(c, s)) for c in OUTPUT_COLUMNS])


def check_judge_config(jcfg: JudgeConfig) -> None:
    """Fail before any engine starts on settings that cannot work (names the key and the fix)."""
    if jcfg.calibration not in CALIBRATIONS:
        raise ValueError(
            f"judge.calibration={jcfg.calibration!r} is not one of {list(CALIBRATIONS)}"
        )
    if (
        jcfg.calibration != "absolute"
        and jcfg.search != "fixed_ratio"
        and (jcfg.verdict != "logprob" or jcfg.votes != 1)
    ):
        raise ValueError(
            f"judge.calibration={jcfg.calibration} needs judge.verdict=logprob and judge.votes=1 "
            "(it compares margins, not sampled votes); or use judge.calibration=absolute"
        )
    if jcfg.isotonic and jcfg.search != "fixed_ratio" and jcfg.verdict != "logprob":
        # generate verdicts carry no score, so the fit would have no points and every cut would be discarded
        raise ValueError(
            "judge.isotonic=true needs judge.verdict=logprob (it fits the probes' p(ENOUGH) scores, "
            "which generated verdicts lack); set judge.isotonic=false or judge.verdict=logprob"
        )
    if jcfg.min_margin_range < 0:
        raise ValueError(f"judge.min_margin_range must be >= 0, got {jcfg.min_margin_range}")
    if jcfg.votes < 1:
        raise ValueError(f"judge.votes must be >= 1, got {jcfg.votes}")
    if not 0 <= jcfg.kv_admission <= 1:
        raise ValueError(
            f"judge.kv_admission must be a share of the KV cache in [0, 1] (0 = off), got {jcfg.kv_admission}"
        )
    if jcfg.verdict == "rollout" and jcfg.votes != 1:
        raise ValueError(
            "judge.verdict=rollout samples judge.rollout_samples continuations per probe; "
            "set judge.votes=1"
        )
    if jcfg.votes > 1 and jcfg.temperature <= 0:
        raise ValueError("judge.votes > 1 needs judge.temperature > 0 (greedy votes are identical)")
    if not 0.0 <= jcfg.threshold <= 1.0:
        raise ValueError(f"judge.threshold must be in [0, 1], got {jcfg.threshold}")
    if jcfg.max_cot_tokens < 1 or jcfg.max_new_tokens < 1:
        raise ValueError("judge.max_cot_tokens and judge.max_new_tokens must be >= 1")


def reference_config(jcfg: JudgeConfig) -> JudgeConfig:
    """Paper-reference mode: the paper's binary search with decode-and-parse verdicts."""
    return dataclasses.replace(
        jcfg, search="binary", verdict="generate", calibration="absolute", isotonic=False
    )


def check_input(
    rows: Iterable[dict[str, Any]], known_cut_field: str = ""
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Driver-side checks that need no model: ids present and unique, question and CoT non-empty strings.

    `known_cut_field` (judge.known_cut_field) is carried as the known cut, except on teacher samples:
    a known decisive sentence belongs to the reference trace, not to a trace the teacher wrote.
    """
    ok: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, row in enumerate(rows):
        pid = row.get(R.PROBLEM_ID)
        pid = str(pid) if pid is not None and str(pid) != "" else f"row-{i}"
        if pid in seen:
            bad.append(
                quarantine_row(
                    STAGE, pid, "duplicate_problem_id", f"row {i} repeats problem_id {pid!r}"
                )
            )
            continue
        seen.add(pid)
        reason = next(
            (
                f"empty_{c}"
                for c in (R.QUESTION, R.COT)
                if not isinstance(row.get(c), str) or not row[c].strip()
            ),
            "",
        )
        if reason:
            bad.append(
                quarantine_row(
                    STAGE, pid, reason, f"field {reason[6:]!r} is missing, empty or whitespace-only"
                )
            )
            continue
        ans = row.get(R.ANSWER)
        own = bool(known_cut_field) and row.get(TRACE_SOURCE) != "teacher"
        checked = (
            KNOWN_INDEX in row
        )  # rows checked before (the in-memory path checks on both sides)
        ok.append(
            {
                R.PROBLEM_ID: pid,
                R.QUESTION: row[R.QUESTION],
                R.COT: row[R.COT],
                R.ANSWER: "" if ans is None else str(ans),
                KNOWN_INDEX: row[KNOWN_INDEX]
                if checked
                else (row.get(known_cut_field) if own else None),
                KNOWN_CHAR_END: row.get(KNOWN_CHAR_END)
                if checked or (own and known_cut_field == DECISIVE_SENTENCE)
                else None,
            }
        )
    return ok, bad
