"""Grading: boxed extraction, gold normalisation, cheap comparison, math-verify with a bounded time."""

from __future__ import annotations

import threading
import time

import pytest

from palign_ray import grading
from palign_ray.grading import Grade, extract_boxed, gold_from_solution, grade, normalize_gold


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so \boxed{42}.", "42"),
        (r"\boxed{\frac{1}{\sqrt{2}}}", r"\frac{1}{\sqrt{2}}"),  # nested braces
        (r"first \boxed{1} then \boxed{2}", "2"),  # the last box wins
        (r"\boxed 5.", "5"),  # no braces
        (r"\fbox{7}", "7"),
        (r"\boxed {x+1}", "x+1"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces are literal
        (r"\boxed{3} and the instruction said \boxed{}", "3"),  # empty box skipped
        (r"\boxed{3} then cut off \boxed{\frac{1}{", "3"),  # unclosed last box skipped
        ("no answer here", None),
        (r"\boxedx{3}", None),
        ("", None),
    ],
)
def test_extract_boxed(text: str, expected: str | None) -> None:
    assert extract_boxed(text) == expected


def test_extract_boxed_pathological_input_is_fast() -> None:
    text = r"\boxed{" * 20_000 + "x" * 100_000
    t = time.monotonic()
    assert extract_boxed(text) is None
    assert time.monotonic() - t < 2.0


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("025", "25"),
        (12.0, "12"),
        (" x ", "x"),
        (70, "70"),
        (0.5, "0.5"),
        ("000", "0"),
        ("$\\frac12$", "\\frac12"),
        ("12.50", "12.5"),
        (r"\text{(B)}", r"\text{(B)}"),
    ],
)
def test_normalize_gold(raw: object, expected: str) -> None:
    assert normalize_gold(raw) == expected


@pytest.mark.parametrize("bad", [None, float("nan"), float("inf"), "", "   ", True])
def test_normalize_gold_rejects_missing(bad: object) -> None:
    with pytest.raises(ValueError):
        normalize_gold(bad)


def test_gold_from_solution() -> None:
    assert gold_from_solution("She makes 9 * 2 = $<<9*2=18>>18.\n#### 18") == "18"
    assert gold_from_solution("so the total is\n#### 1,234") == "1234"
    assert (
        gold_from_solution(r"Thus $r = \boxed{\left( 3, \frac{\pi}{2} \right)}$.")
        == r"\left( 3, \frac{\pi}{2} \right)"
    )
    assert gold_from_solution("no final answer") is None


@pytest.mark.parametrize(
    ("prediction", "gold"),
    [
        (r"\boxed{\frac{1}{2}}", "0.5"),
        (r"\boxed{\dfrac{\sqrt{3}}{2}}", r"\frac{\sqrt{3}}{2}"),
        (r"\boxed{\tfrac{3}{4}}", r"\frac34"),
        (r"\boxed{025}", "25"),  # zero-padded AIME
        (r"\boxed{25}", "025"),
        (r"\boxed{1,000}", "1000"),  # thousands separator
        (r"\boxed{1{,}000}", "1000"),
        (r"\boxed{50\%}", "50"),  # percentage
        (r"\boxed{10 \text{ cm}}", "10"),  # units
        (r"\boxed{90^\circ}", "90"),
        (r"\boxed{\$18}", "18"),
        (r"\boxed{(1, 2]}", "(1,2]"),  # interval
        (r"\boxed{\left[-2, 5\right)}", "[-2,5)"),
        (r"\boxed{x = 5}", "5"),
        (r"\boxed{\text{(B)}}", "B"),
        (r"\boxed{12.0}", "12"),
        (r"\boxed{\pi/2}", r"\frac{\pi}{2}"),
        (r"\boxed{2\sqrt{2}}", r"\sqrt{8}"),
    ],
)
def test_grade_correct(prediction: str, gold: str) -> None:
    g = grade(prediction, gold)
    assert g == Grade(True, extract_boxed(prediction), "correct")


@pytest.mark.parametrize(
    ("prediction", "gold"),
    [
        (r"\boxed{\frac{1}{3}}", "0.5"),
        (r"\boxed{26}", "025"),
        (r"\boxed{1,001}", "1000"),
        (r"\boxed{(1, 2)}", "(1,2]"),  # open vs half-open interval
        (r"\boxed{3} then \boxed{4}", "3"),  # only the last box counts
        (r"\boxed{\sqrt{3}}", r"\frac{\sqrt{3}}{2}"),
        (r"\boxed{5x}", "5"),  # a variable is not a unit
        (r"\boxed{10 \text{ cm}}", "11"),
    ],
)
def test_grade_wrong(prediction: str, gold: str) -> None:
    g = grade(prediction, gold)
    assert (g.correct, g.reason) == (False, "wrong_answer")


@pytest.mark.parametrize(
    ("prediction", "gold"),
    [
        (r"\boxed{5 pi}", "5"),
        (r"\boxed{2 \mathrm{i}}", "2"),
        (r"\boxed{3 \mathrm{e}}", "3"),
        (r"\boxed{4 \text{ i}}", "4"),
        (r"\boxed{5\pi}", "5"),
        (r"\boxed{7 ab}", "7"),
        (r"\boxed{2 \mathrm{d}x}", "2"),
    ],
)
def test_trailing_symbols_are_not_units(prediction: str, gold: str) -> None:
    """Only real units are stripped: a constant or variable after the number changes the answer."""
    assert grading._cheap_verdict(extract_boxed(prediction), gold) is not True
    if "ab" not in prediction and "dx" not in prediction.replace("}", ""):
        # math-verify drops \mathrm{i} and \text{...} as units, so the cheap path decides a constant multiple
        assert grading._cheap_verdict(extract_boxed(prediction), gold) is False
        assert grade(prediction, gold) == Grade(False, extract_boxed(prediction), "wrong_answer")
    assert grading._cheap_verdict(r"0 \mathrm{i}", "0") is None  # 0·i is 0: left to math-verify


@pytest.mark.parametrize(
    "prediction",
    [
        r"\boxed{5 cm}",
        r"\boxed{5\text{ dollars}}",
        r"\boxed{5 degrees}",
        r"\boxed{5 \mathrm{cm}}",
        r"\boxed{5\text{ cm}^2}",
        r"\boxed{5 square units}",
        r"\boxed{5 \text{km/h}}",
        r"\boxed{5\mbox{ hours}}",
        r"\boxed{5 \mathrm{kg}}",
    ],
)
def test_real_units_strip_on_the_cheap_path(
    prediction: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        grading, "_verify_bounded", lambda *a: pytest.fail("child used for a number with a unit")
    )
    assert grade(prediction, "5").correct
    assert grade(prediction, "6").reason == "wrong_answer"


def test_grade_no_box() -> None:
    assert grade("The answer is 5.", "5") == Grade(False, None, "no_boxed_answer")


def test_pathological_answer_is_bounded_by_timeout() -> None:
    # sympy never finishes comparing a power tower with 5; the child is killed and replaced.
    t = time.monotonic()
    g = grade(r"\boxed{9^{9^{9^{9^{9}}}}}", "5", timeout_s=1.0)
    assert time.monotonic() - t < 15.0
    assert g == Grade(False, "9^{9^{9^{9^{9}}}}", "grader_timeout")
    assert grade(
        r"\boxed{\frac{4}{8}}", "0.5", timeout_s=10.0
    ).correct  # a fresh child serves the next item


def test_grade_from_threads_is_safe() -> None:
    # math-verify's own signal.alarm timeout would raise outside the main thread.
    cases = [(rf"\boxed{{\frac{{{i}}}{{{2 * i}}}}}", "0.5", True) for i in range(1, 7)]
    cases += [(rf"\boxed{{\frac{{{i}}}{{{3 * i}}}}}", "0.5", False) for i in range(1, 7)]
    results: dict[int, Grade] = {}

    def work(indices: range) -> None:
        for i in indices:
            results[i] = grade(cases[i][0], cases[i][1], timeout_s=30.0)

    threads = [threading.Thread(target=work, args=(range(t, len(cases), 3),)) for t in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i].correct for i in range(len(cases))] == [c[2] for c in cases]
    assert all(r.reason in ("correct", "wrong_answer") for r in results.values())


def test_cache_makes_repeats_free(monkeypatch: pytest.MonkeyPatch) -> None:
    assert grade(r"\boxed{\sqrt{4}/1}", "2").correct
    calls = []
    monkeypatch.setattr(grading, "_verify_bounded", lambda *a: calls.append(a) or "grader_error")
    assert grade(r"so \boxed{\sqrt{4}/1}", "2").correct  # cached on (extracted, gold)
    assert calls == []


def test_cheap_path_skips_the_child(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        grading, "_verify_bounded", lambda *a: pytest.fail("child used for a plain match")
    )
    assert grade(r"\boxed{1,234}", "1234").correct
    assert (
        grade(r"\boxed{1235}", "1234").reason == "wrong_answer"
    )  # two different numbers decide too


@pytest.mark.timeout(300)
def test_grade_inside_a_ray_task_with_timeout(ray_session) -> None:
    """Stages grade inside Ray workers (not the main thread of a script): the bound still holds."""

    @ray_session.remote(num_cpus=0.1)
    def remote_grade(pred: str, gold: str, timeout_s: float) -> tuple[bool, str]:
        import threading as th

        from palign_ray.grading import grade as g

        box: list = []
        t = th.Thread(
            target=lambda: box.append(g(pred, gold, timeout_s=timeout_s))
        )  # a non-main thread too
        t.start()
        t.join()
        return box[0].correct, box[0].reason

    assert ray_session.get(remote_grade.remote(r"\boxed{\frac{3}{6}}", "0.5", 30.0)) == (
        True,
        "correct",
    )
    assert ray_session.get(remote_grade.remote(r"\boxed{9^{9^{9^{9^{9}}}}}", "5", 1.0)) == (
        False,
        "grader_timeout",
    )
