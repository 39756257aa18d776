"""Synthetic judge inputs shared by the judge tests: traces whose decisive sentence is known."""

MARK = "KEY"


def trace(n: int, t: int) -> str:
    """n sentences; the decisive one (containing MARK) is sentence t (t > n: none)."""
    return " ".join(
        f"Step {i}: we {'combine the ' + MARK if i == t else 'look at'} the numbers {i} and {i + 1}."
        for i in range(1, n + 1)
    )


def rows_for(cases: list[tuple[int, int]]) -> list[dict]:
    return [
        {
            "problem_id": f"p{i}",
            "question": f"What is {i} + {i}?",
            "cot": trace(n, t),
            "answer": str(2 * i),
        }
        for i, (n, t) in enumerate(cases)
    ]


def reasoning_of(tokenizer, ids) -> str:
    """The 'Partial reasoning' part of a rendered judge prompt (ChatML)."""
    text = tokenizer.decode(list(ids))
    return text.split("Partial reasoning:\n", 1)[1].split("\n<|im_end|>", 1)[0]
