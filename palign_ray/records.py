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
