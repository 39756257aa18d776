"""Column names shared by every stage (one place), and the required-columns check."""

from __future__ import annotations

from collections.abc import Iterable

PROBLEM_ID = "problem_id"
QUESTION = "question"
ANSWER = "answer"  # normalised gold answer (string)
COT = "cot"  # the teacher's reasoning trace
PROMPT = "prompt"  # free text sent as one user turn
GENERATIONS = "generations"  # list[str], one per sample
FINISH_REASONS = "finish_reasons"
NUM_PROMPT_TOKENS = "num_prompt_tokens"
NUM_CACHED_TOKENS = "num_cached_tokens"
NUM_GENERATED_TOKENS = "num_generated_tokens"  # list[int], one per sample
PREFIX = "prefix"
CONTINUATION = "continuation"
REASON = "reason"  # quarantine reason code
DETAIL = "detail"  # quarantine free-text detail
STAGE = "stage"

# Problem columns beyond the core ones (the problems stage writes them, the teacher carries them).
SOLUTION = "solution"  # a worked solution (built-in problems, GSM8K-style data)
DECISIVE_SENTENCE = "decisive_sentence"  # 0-based index of the sentence that determines the answer
DECISIVE_CHAR_END = (
    "decisive_char_end"  # end offset of that sentence in `solution` (splitter-independent)
)
SOURCE = "source"
TEMPLATE = "template"
GROUP = "group"  # the row's value of the data's domain/source column (e.g. s1K's cot_type), for per-group counts
# Columns of ingested traces (problems.trace_field): how the field was stored, its think-tag case, and
# what followed `</think>` (R1-style final answers), kept apart from the CoT.
TRACE_FORMAT = "trace_format"
THINK_SPLIT = "think_split"
AFTER_THINK = "after_think"
TRACE_SOURCE = "trace_source"  # the teacher stage's: "teacher" | "reference" | "ingested"


class MissingColumnsError(ValueError):
    pass


def require_columns(
    stage: str, columns: Iterable[str], required: Iterable[str], source: str = ""
) -> None:
    """Fail on entry to a stage, naming the missing columns and where they were expected."""
    missing = [c for c in required if c not in set(columns)]
    if missing:
        where = f" in {source}" if source else ""
        raise MissingColumnsError(
            f"stage '{stage}': missing column(s) {missing}{where}; present: {sorted(columns)}"
        )
