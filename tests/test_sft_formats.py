"""SFT file rows → examples: a prompt field that is not text rejects the row instead of vanishing."""

from __future__ import annotations

import math

import pytest

from palign_ray.sft_formats import ChatExample, Rejected, from_row


@pytest.mark.parametrize(
    "row",
    [
        {"instruction": "Solve.", "input": 12345, "output": "2"},
        {"instruction": "Solve.", "input": ["1", "+", "1"], "output": "2"},
        {"instruction": "Solve.", "input": math.nan, "output": "2"},
        {"instruction": 7, "input": "1+1?", "output": "2"},
        {"instruction": "Solve.", "input": "1+1?", "output": 2},
        {"instruction": "Solve.", "input": "1+1?", "output": "2", "system": {"x": 1}},
    ],
)
def test_alpaca_fields_that_are_not_text_reject_the_row(row):
    """Issue 27: `"input": 12345` (a list, NaN; `instruction: 7`) was dropped and the answer still trained."""
    got = from_row(row, "alpaca", "\n")
    assert isinstance(got, Rejected) and got.reason == "wrong_type"
    bad = next(k for k, v in row.items() if not isinstance(v, str))
    assert repr(bad) in got.detail


def test_absent_or_null_fields_are_still_optional():
    got = from_row({"instruction": "Solve.", "input": None, "output": "2"}, "alpaca", "\n")
    assert got == ChatExample("", "Solve.", "2")
    turns = [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]
    assert isinstance(from_row({"conversations": turns, "system": 3}, "sharegpt"), Rejected)
    assert from_row({"conversations": turns}, "sharegpt") == ChatExample("", "Q", "A")
