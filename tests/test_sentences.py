"""Sentence segmentation: hand-written hard cases, contract properties on random and real CoTs, paper mode, CLI."""

from __future__ import annotations

import bisect
import io
import json
import os
import re
import statistics
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from palign_ray.cli import main as cli_main
from palign_ray.sentences import _REGION_TAIL_SLACK, protected_regions, split_sentences

# ---------------------------------------------------------------- hand-written hard cases
# Each case: the expected sentences, concatenated they are the text itself.
CASES: dict[str, list[str]] = {
    "decimals_numbers_currency": [
        "Pi is about 3.14 and 1,000 is big. ",
        "It costs $2.50 per item. ",
        "Then 0.5 more.",
    ],
    "abbreviations": [
        "See Fig. 3 and Eq. 5, e.g. the bound, i.e. the limit. ",
        "Dr. Smith vs. Mr. Jones met Prof. X today. ",
        "Apples, pears, etc. are fruit. ",
        "We stop here etc. ",
        "Then we go on, cf. the proof in Sec. 2. ",
        "Done.",
    ],
    "inline_math": ["We have $x = 1. Y = 2$ so done. ", "Next $a. B$ here."],
    "display_math": [
        "Let $$a. B$$ hold. ",
        "So \\[ x = 1. Y = 2 \\] and \\( p. Q \\) hold. ",
        "Good.",
    ],
    "environment_multiline": [
        "We get:\n",
        "\\begin{align}\na &= 1. B = 2 \\\\\n\nc &= 3\n\\end{align}\n",
        "Hence done.",
    ],
    "nested_environment": [
        "Matrix \\begin{array}{c} \\begin{array}{c} 1. X \\end{array}. Y \\end{array} here. ",
        "End.",
    ],
    "enumeration_lines": [
        "Steps:\n",
        "1. Compute x. ",
        "Then y.\n",
        "2. Check it\n",
        "(a) first part\n",
        "b) second part",
    ],
    "enumeration_artefact": [
        "Equations:\n\n",
        "1.. 540/s + t = 240\n",
        "2.. 540/(s + 2) + t = 144\n",
    ],
    "lone_marker_merged": ["1.\nThe first claim.\n", "2.\nThe second claim."],
    "ellipsis": [
        "Wait... ",
        "Let me think. ",
        "The sum 1, 2, ... 10 and x... which works. ",
        "Hmm… ",
        "OK then.",
    ],
    "question_exclamation": [
        "Is it 5? ",
        "Yes! ",
        "So 3! 2! = 12 and 5! ways exist. ",
        "Right?! ",
        "Sure.",
    ],
    "paragraphs_and_lines": [
        "First line without period\n",
        "second line\n\n",
        "New paragraph here\n",
        "end",
    ],
    "markdown": [
        "# Solution\n\n",
        "## Step 1: Setup\n",
        "- item one. ",
        "Still item one\n",
        "* item two\n",
        "> quoted text",
    ],
    "bold_list_marker": ["**1.** First bold item. ", "**Step 2.** ", "Next."],
    "code_fence": [
        "Code:\n",
        "```python\nx = 1. Y = 2\n\nprint(x)  # Done. Yes\n```\n",
        "After code. ",
        "Next.",
    ],
    "inline_code": ["Call `foo. Bar` now. ", "Then stop."],
    "closing_quotes_brackets": [
        'He said "Stop." ',
        "Then (see above.) ",
        "Next \u201cone.\u201d ",
        "Last].",
    ],
    "lowercase_after_period": ["So k=6 works.. k=7 fails too. ", "Approx. equal values."],
    "leading_trailing_whitespace": ["\n\n  First one. ", "Second one.  \n\n  "],
    "unclosed_dollar_is_prose": ["It costs $5. ", "Then we pay $10 more. ", "Total is high."],
    "currency_pair_not_math": ["Pay $5 and $7. ", "Done."],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_hand_written_cases(name: str) -> None:
    expected = CASES[name]
    text = "".join(expected)
    spans = split_sentences(text)
    assert [text[a:b] for a, b in spans] == expected
    check_contract(text, spans, 400, "robust")


def test_no_punctuation_falls_back_to_lines_then_whitespace_chunks() -> None:
    lines = ["word " * 30 + "end", "x" * 10]  # 30 words per line, no punctuation at all
    text = "\n".join(lines * 3)
    spans = split_sentences(text, max_chars=60)
    pieces = [text[a:b] for a, b in spans]
    assert all(len(p.strip()) <= 60 for p in pieces)
    assert all(p.endswith((" ", "\n")) for p in pieces[:-1])  # cut at whitespace only
    assert sum(p.endswith("\n") for p in pieces) == 5  # every line break is a boundary
    assert len(pieces) == 3 * (3 + 1)  # 155 chars of words → 3 chunks of ≤ 60, plus the short line


def test_no_whitespace_is_hard_cut() -> None:
    text = "a" * 1000
    spans = split_sentences(text, max_chars=300)
    assert spans == [(0, 300), (300, 600), (600, 900), (900, 1000)]


def test_long_trace_without_punctuation_is_never_one_sentence() -> None:
    text = " ".join(f"token{i}" for i in range(5000))  # ~39k chars, no punctuation, no newline
    spans = split_sentences(text)
    assert len(spans) > 90
    assert max(len(text[a:b].strip()) for a, b in spans) <= 400


def test_chunks_prefer_clause_boundaries() -> None:
    text = "alpha beta gamma delta epsilon, zeta eta theta iota kappa lambda mu"
    pieces = [text[a:b] for a, b in split_sentences(text, max_chars=40)]
    assert (
        pieces[0] == "alpha beta gamma delta epsilon, "
    )  # not "... zeta ", the last whitespace within 40
    assert all(len(p.strip()) <= 40 for p in pieces)


def test_long_display_math_kept_whole_with_its_punctuation() -> None:
    math = "\\[ " + " + ".join(f"x_{i}" for i in range(200)) + " \\]"
    text = f"Sum it up: {math}. Then more text follows here."
    pieces = [text[a:b] for a, b in split_sentences(text, max_chars=100)]
    assert pieces == ["Sum it up: ", math + ". ", "Then more text follows here."]


def test_unclosed_display_math_is_bounded() -> None:
    text = "Start \\[ x = 1. " + "Next sentence here. " * 400  # no closing \] anywhere
    spans = split_sentences(text)
    assert protected_regions(text) == []
    assert len(spans) > 300
    assert max(len(text[a:b].strip()) for a, b in spans) <= 400


def test_unclosed_fence_and_dollar_do_not_swallow_the_rest() -> None:
    text = "```python\nx = 1\n" + "Plain prose. " * 500 + "and $x = " + "More prose. " * 500
    spans = split_sentences(text)
    assert len(spans) > 900
    check_contract(text, spans, 400, "robust")


def test_stray_openers_stay_linear() -> None:
    text = "".join(
        f"$a{i} \\[ b. C \\( `d " for i in range(20000)
    )  # ~440k chars of unclosed delimiters
    t0 = time.perf_counter()
    spans = split_sentences(text)
    assert time.perf_counter() - t0 < 10  # ~0.5 s here; quadratic scanning took minutes
    check_contract(text, spans, 400, "robust")


def test_closed_region_beyond_limit_is_text() -> None:
    far = "$a " + "Word. " * 100 + "b$"  # a closer exists, but farther than the inline limit
    assert protected_regions(far, max_chars=100) == []
    assert len(split_sentences(far, max_chars=100)) > 50


def test_empty_and_whitespace_only() -> None:
    assert split_sentences("") == []
    assert split_sentences(" \n\t ") == []
    assert split_sentences("", mode="paper") == []
    assert split_sentences("Hi.", mode="robust") == [(0, 3)]


def test_leading_whitespace_belongs_to_first_sentence() -> None:
    assert split_sentences("\n\nHello.\nWorld") == [(0, 9), (9, 14)]
    assert split_sentences("\n$a$$", max_chars=1) == [
        (0, 5)
    ]  # found by hypothesis: no whitespace-only first span


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="mode"):
        split_sentences("a", mode="nltk")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_chars"):
        split_sentences("a", max_chars=0)


def test_paper_mode_hand_written() -> None:
    text = "Pi is 3.14. So x=1. Then e.g. y.  Next. "
    pieces = [text[a:b] for a, b in split_sentences(text, mode="paper")]
    assert pieces == ["Pi is 3.14. ", "So x=1. ", "Then e.g. ", "y.  ", "Next. "]
    assert [p.strip() for p in pieces] == [(s + ".").strip() for s in text.split(". ")][:-1]


# ---------------------------------------------------------------- the contract, checked everywhere
def check_contract(text: str, spans: list[tuple[int, int]], max_chars: int, mode: str) -> None:
    if not text.strip():
        assert spans == []
        return
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    for (_, b), (c, _) in zip(spans, spans[1:], strict=False):
        assert b == c, "spans must be contiguous"
    for a, b in spans:
        assert a < b and text[a:b].strip(), f"empty or whitespace-only span {(a, b)}"
    for a, _ in spans[1:]:
        assert not text[a].isspace(), "whitespace after a sentence belongs to that sentence"
    if mode == "paper":
        return
    regions = protected_regions(text, max_chars)
    starts = {r[0]: r for r in regions}
    for _, b in spans[:-1]:
        i = bisect.bisect_right(regions, (b, len(text) + 1)) - 1
        assert i < 0 or not regions[i][0] < b < regions[i][1], (
            f"boundary {b} inside region {regions[i]}"
        )
    for a, b in spans:
        piece = text[a:b]
        lo, hi = a + len(piece) - len(piece.lstrip()), a + len(piece.rstrip())
        if (
            hi - lo > max_chars
        ):  # only one over-long region (plus a little trailing punctuation) may do this
            r0, r1 = starts.get(lo, (lo, lo))
            assert r1 - r0 > max_chars and hi - r1 <= _REGION_TAIL_SLACK, (
                f"over-long sentence {piece[:80]!r}"
            )


# ---------------------------------------------------------------- property tests on random text
_WORDS = st.sampled_from(
    [
        "the",
        "Then",
        "x",
        "3.14",
        "1,000",
        "$2.50",
        "e.g.",
        "i.e.",
        "etc.",
        "Fig.",
        "vs.",
        "Dr.",
        "1.",
        "(a)",
        "a)",
        "...",
        "?",
        "!",
        "5!",
        "Wait",
        "\u2026",
        '"Stop."',
        "(see.)",
        "#",
        "##",
        "-",
        "*",
        "**",
        "`x`",
        "$",
        "\\[",
        "\\]",
        "```",
        "\\begin{align}",
        "\\end{align}",
        "$$",
        "\u00e9t\u00e9",
        "\u6570\u5b66",
        "",
        "A.",
        "B",
    ]
)
_SEPARATORS = st.sampled_from(
    [" ", " ", " ", ". ", "? ", "! ", "\n", "\n\n", "  ", ".\n", "\t", ".. ", ", ", ": "]
)


@st.composite
def cot_like(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.tuples(_WORDS, _SEPARATORS), max_size=120))
    return "".join(w + s for w, s in parts)


@settings(max_examples=300, deadline=None)
@given(
    text=st.one_of(st.text(max_size=400), cot_like()),
    max_chars=st.integers(1, 120),
    mode=st.sampled_from(["robust", "paper"]),
)
def test_contract_on_random_text(text: str, max_chars: int, mode: str) -> None:
    check_contract(text, split_sentences(text, mode, max_chars), max_chars, mode)


_REGIONS = st.sampled_from(
    [
        "$x. Y = 2$",
        "$$a. B\n\nC$$",
        "\\[ p. Q \\]",
        "\\( r? S \\)",
        "\\begin{align} a. B \\\\ c \\end{align}",
        "```\ncode. More\n\nlines. End\n```",
        "`inline. Code`",
        "\\begin{cases} 1. A \\begin{cases} 2. B \\end{cases} \\end{cases}",
    ]
)
_PROSE = st.sampled_from(
    [
        "Then x = 3.14. ",
        "Yes! ",
        "Wait... Let me see. ",
        "1. ",
        "\n",
        "\n\n",
        "So ",
        "Fig. 2 shows. ",
    ]
)


@settings(max_examples=200, deadline=None)
@given(
    parts=st.lists(st.tuples(_PROSE, st.one_of(st.none(), _REGIONS)), min_size=1, max_size=40),
    max_chars=st.integers(10, 400),
)
def test_never_split_inside_known_regions(
    parts: list[tuple[str, str | None]], max_chars: int
) -> None:
    text, regions = "", []
    for prose, region in parts:
        text += prose
        if region is not None:
            regions.append((len(text), len(text) + len(region)))
            text += region + " "
    spans = split_sentences(text, max_chars=max_chars)
    check_contract(text, spans, max_chars, "robust")
    for _, b in spans[:-1]:
        assert not any(r0 < b < r1 for r0, r1 in regions), (
            f"boundary {b} inside {text[max(0, b - 20) : b + 20]!r}"
        )


# ---------------------------------------------------------------- the real long generations
@pytest.fixture(scope="module")
def real_traces(shared_data: str) -> list[str]:
    outs = []
    for name in ("aime24-output.jsonl", "aime25-output.jsonl"):
        with open(os.path.join(shared_data, "palign-results", name), encoding="utf-8") as f:
            for line in f:
                outs += json.loads(line)["output"]
    assert len(outs) == 180
    return outs


@pytest.fixture(scope="module")
def real_robust(real_traces: list[str]) -> list[list[tuple[int, int]]]:
    return [split_sentences(t) for t in real_traces]


# Independent of the scanner: each delimiter pair matched on its own (bounded like the default limits).
_ORACLE = [
    re.compile(p, re.S)
    for p in (
        r"\\\[.{0,3200}?\\\]",
        r"\\\(.{0,400}?\\\)",
        r"```.{0,3200}?```",
        r"\\begin\{(\w+\*?)\}.{0,3200}?\\end\{\1\}",
    )
]


def test_real_traces_contract_and_no_split_inside_math(real_traces, real_robust) -> None:
    num_checked = 0
    for text, spans in zip(real_traces, real_robust, strict=True):
        check_contract(text, spans, 400, "robust")
        bounds = [b for _, b in spans[:-1]]
        for pattern in _ORACLE:
            for m in pattern.finditer(text):
                inside = [b for b in bounds if m.start() < b < m.end()]
                assert not inside, f"boundary inside {m.group()[:80]!r}"
                num_checked += 1
    assert (
        num_checked > 6000
    )  # the traces hold ~1.6k \[..\], ~4.6k \(..\), 31 code blocks, 17 environments


def test_real_traces_are_split_finely(real_traces, real_robust) -> None:
    for text, spans in zip(real_traces, real_robust, strict=True):
        assert len(spans) >= max(2, len(text) // 1000)  # the shortest trace is ~3.8k chars
    counts = [len(s) for s in real_robust]
    assert statistics.median(counts) > 150


def test_real_traces_paper_mode_equals_authors_split(real_traces) -> None:
    """Span k (stripped) is the authors' piece k + "." (stripped), and prefix k is their first k pieces joined
    by ". " without the ".. " re-joining artefact. The last piece is compared without the appended "."."""
    for text in real_traces:
        spans = split_sentences(text, mode="paper")
        pieces = text.split(". ")
        if not pieces[
            -1
        ].strip():  # a trailing ". " leaves an empty last piece, merged into the one before
            pieces = pieces[:-1]
            assert text[spans[-1][0] :].rstrip() == (pieces[-1] + ".").strip()
        assert len(spans) == len(pieces)
        ours = [text[a:b].strip() for a, b in spans]
        assert ours[:-1] == [(s + ".").strip() for s in pieces[:-1]]
        for k in {1, len(spans) // 2, len(spans) - 1} - {0}:
            assert text[: spans[k - 1][1]].rstrip() == ". ".join(pieces[:k]) + "."


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_contract_on_real_fragments(real_traces, data) -> None:
    text = data.draw(st.sampled_from(real_traces))
    start = data.draw(st.integers(0, len(text) - 1))
    fragment = text[start : start + data.draw(st.integers(1, 6000))]
    max_chars = data.draw(st.integers(5, 400))
    mode = data.draw(st.sampled_from(["robust", "paper"]))
    check_contract(fragment, split_sentences(fragment, mode, max_chars), max_chars, mode)


def test_real_traces_report(real_traces, real_robust) -> None:
    """Numbers for the issue notes (printed with -s); the time bound keeps the splitter fit for 100k traces."""
    t0 = time.perf_counter()
    paper = [split_sentences(t, mode="paper") for t in real_traces]
    paper_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    robust = [split_sentences(t) for t in real_traces]
    robust_s = time.perf_counter() - t0
    assert robust == real_robust  # deterministic
    for name, res, secs in (("robust", robust, robust_s), ("paper", paper, paper_s)):
        counts = [len(r) for r in res]
        longest = max(
            len(t[a:b].strip()) for t, r in zip(real_traces, res, strict=True) for a, b in r
        )
        print(
            f"{name}: sentences/trace median {statistics.median(counts)} max {max(counts)}; "
            f"longest sentence {longest} chars; {secs:.2f} s for {len(res)} traces"
        )
    assert robust_s < 30


# ---------------------------------------------------------------- CLI and imports
def _rows(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def test_cli_file(tmp_path, capsys) -> None:
    path = tmp_path / "cot.txt"
    text = "First one. Second one?\r\nThird $a. B$ line.\n"
    path.write_bytes(text.encode("utf-8"))
    assert cli_main(["split", str(path)]) == 0
    rows = _rows(capsys.readouterr().out)
    assert [list(r) for r in rows] == [["index", "start", "end", "text"]] * len(rows)
    assert [r["index"] for r in rows] == list(range(len(rows)))
    assert (
        "".join(r["text"] for r in rows) == text
    )  # \r\n kept: offsets index the file's own characters
    assert [r["text"] for r in rows] == ["First one. ", "Second one?\r\n", "Third $a. B$ line.\n"]
    assert all(text[r["start"] : r["end"]] == r["text"] for r in rows)


def test_cli_stdin_modes_and_overrides(monkeypatch, capsys) -> None:
    text = "Pi is 3.14. So e.g. x. " + "word " * 40
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode("utf-8"))))
    assert cli_main(["split", "--mode", "paper"]) == 0
    assert [r["text"] for r in _rows(capsys.readouterr().out)][:3] == [
        "Pi is 3.14. ",
        "So e.g. ",
        "x. ",
    ]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode("utf-8"))))
    assert cli_main(["split", "-", "judge.max_sentence_chars=50"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert max(len(r["text"].strip()) for r in rows) <= 50 and len(rows) == 6


def test_cli_errors(tmp_path, capsys) -> None:
    assert cli_main(["split", str(tmp_path / "missing.txt")]) == 2
    assert "missing.txt" in capsys.readouterr().err
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    assert cli_main(["split", str(bad)]) == 2
    assert "latin1.txt: not UTF-8" in capsys.readouterr().err
    good = tmp_path / "ok.txt"
    good.write_text("Hi.")
    assert cli_main(["split", str(good), "--max-chars", "0"]) == 2
    assert "max_chars" in capsys.readouterr().err


def test_cli_entry_point_and_lazy_imports(tmp_path) -> None:
    code = (
        "import sys, palign_ray.sentences; "
        "bad = [m for m in ('vllm', 'torch', 'ray', 'deepspeed') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    out = subprocess.run(
        [sys.executable, "-m", "palign_ray", "split", "--max-chars", "20"],
        input="One two. Three?",
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert _rows(out) == [
        {"index": 0, "start": 0, "end": 9, "text": "One two. "},
        {"index": 1, "start": 9, "end": 15, "text": "Three?"},
    ]
