"""Existing SFT files (alpaca, sharegpt, chat messages) → single-turn (system, user, response) examples."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FORMATS = ("alpaca", "sharegpt", "messages")
# ShareGPT speakers by role; LLaMA-Factory's converter accepts the same names.
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}


@dataclass(frozen=True)
class ChatExample:
    """One SFT example as given: the prompt turns and the response trained on (verbatim)."""

    system: str
    user: str
    response: str


@dataclass(frozen=True)
class Rejected:
    reason: str
    detail: str


def _text(row: dict[str, Any], key: str) -> str | None:
    value = row.get(key)
    return value if isinstance(value, str) else None


def _not_text(row: dict[str, Any], keys: tuple[str, ...], fmt: str) -> Rejected | None:
    """A prompt field that is present but not text (a number, a list, NaN) rejects the row.

    Dropping it would train the response on a prompt that lost part of its question (issue 27).
    """
    for key in keys:
        value = row.get(key)
        if value is not None and not isinstance(value, str):
            return Rejected(
                "wrong_type",
                f"{fmt} field {key!r} is {type(value).__name__} {str(value)[:60]!r}, not text",
            )
    return None


def from_alpaca(row: dict[str, Any], join: str) -> ChatExample | Rejected:
    """`instruction` + join + `input` as the user turn, `output` as the response (optional `system`).

    join="" glues them as the paper's prompt does (`...within \\boxed{}.{problem}`), so a P-ALIGN
    file trains on the prompt evaluation uses; LLaMA-Factory's alpaca reader joins with "\\n".
    """
    if bad := _not_text(row, ("instruction", "input", "system", "output"), "alpaca"):
        return bad
    output = _text(row, "output")
    if output is None or not output.strip():
        return Rejected("missing_field", "alpaca row needs a non-empty string 'output'")
    if row.get("history"):
        return Rejected(
            "not_single_turn",
            f"alpaca row has {len(row['history'])} history turn(s); build-sft trains single turns",
        )
    parts = [p for p in (_text(row, "instruction") or "", _text(row, "input") or "") if p]
    if not parts:
        return Rejected("missing_field", "alpaca row needs a non-empty 'instruction' or 'input'")
    return ChatExample(_text(row, "system") or "", join.join(parts), output)


def _from_turns(
    turns: Any, role_key: str, text_key: str, roles: dict[str, str], system: str, fmt: str
) -> ChatExample | Rejected:
    """[system,] user, assistant turns → ChatExample; anything else is rejected with what was found."""
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        return Rejected(
            "missing_field", f"{fmt} row needs a list of {{{role_key!r}, {text_key!r}}} objects"
        )
    named = [
        (roles.get(str(t.get(role_key)), str(t.get(role_key))), t.get(text_key)) for t in turns
    ]
    if named and named[0][0] == "system":
        system, named = named[0][1], named[1:]
    found = [r for r, _ in named]
    if found != ["user", "assistant"]:
        reason = (
            "not_single_turn"
            if len(found) > 2 and set(found) <= {"user", "assistant"}
            else "bad_roles"
        )
        return Rejected(
            reason, f"{fmt} row has roles {found}; build-sft takes [system,] user, assistant"
        )
    (_, user), (_, response) = named
    if not all(isinstance(x, str) and x.strip() for x in (user, response)) or not isinstance(
        system, str
    ):
        return Rejected(
            "missing_field", f"{fmt} row: the user and assistant turns need non-empty text"
        )
    return ChatExample(system, user, response)


def from_row(row: dict[str, Any], fmt: str, join: str = "") -> ChatExample | Rejected:
    """One row of an SFT file in `fmt` → the example, or why it cannot be used."""
    if fmt == "alpaca":
        return from_alpaca(row, join)
    if fmt == "sharegpt":
        if bad := _not_text(row, ("system",), fmt):
            return bad
        return _from_turns(
            row.get("conversations"),
            "from",
            "value",
            SHAREGPT_ROLES,
            _text(row, "system") or "",
            fmt,
        )
    if fmt == "messages":
        return _from_turns(row.get("messages"), "role", "content", {}, "", fmt)
    raise ValueError(f"format {fmt!r} is not one of {FORMATS}")


def example_id(row: dict[str, Any], n: int) -> str:
    """The row's id field, else its JSONL line, else its position (stable for one file)."""
    for key in ("id", "problem_id"):
        if row.get(key) not in (None, ""):
            return str(row[key])
    return f"line-{row['_source_line']}" if "_source_line" in row else f"row-{n}"
