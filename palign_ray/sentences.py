"""Sentence segmentation of long chains of thought into character spans (robust and paper modes)."""

from __future__ import annotations

import bisect
import re
from typing import Literal

Span = tuple[int, int]  # half-open character offsets into the original text
Mode = Literal["robust", "paper"]

# An opener whose closer is not found within this many characters is plain text, so one stray `$` or
# `\[` cannot swallow the rest of a 30k-character trace. Inline regions stay short; display math,
# environments and code blocks may be longer (the longest in the released AIME traces is ~620 chars).
_MIN_INLINE_LIMIT = 200
_MIN_DISPLAY_LIMIT = 2000
_DISPLAY_LIMIT_FACTOR = 8
# Punctuation right after an over-long region ("\]." or "```,") stays with it up to this many chars.
_REGION_TAIL_SLACK = 16

_OPENER = re.compile(
    r"(?P<fence>```|~~~)|(?P<dd>\$\$)|(?P<bracket>\\\[)|(?P<paren>\\\()"
    r"|(?P<env>\\begin\{(?P<name>[A-Za-z]{1,30}\*?)\})|(?P<dollar>(?<!\\)\$)|(?P<tick>`)"
)
_BLANK_LINE = re.compile(r"\n[^\S\n]*\n")
# Terminal punctuation, optional closing quotes/brackets/emphasis, then the whitespace that follows.
_SENTENCE_END = re.compile(r"([.!?\u2026]+)([\"'\u201d\u2019\u00bb)\]}*_]*)(\s+)")
_LINE_BREAK = re.compile(r"\s*[\n\r\u2028\u2029]\s*")
_WHITESPACE = re.compile(r"\s+")
_LAST_TOKEN = re.compile(r"\S*$")
_MARKDOWN_LINE_PREFIX = re.compile(r"[^\S\n]*(?:(?:#{1,6}|>|[-*+\u2022])[^\S\n]*)*")
_ENUM_TOKEN = re.compile(r"\(?(?:\d{1,3}|[A-Za-z]|[ivxlcdm]{1,6}|[IVXLCDM]{1,6})")
_DOTTED_ABBREV = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]")
# A sentence consisting only of a list marker, bullet or a few symbols is merged into a neighbour.
_TINY = re.compile(
    r"(?:[-*+\u2022>#]+|\(?\d{1,3}[.)]+|\(?[A-Za-z][.)]+|\([A-Za-z0-9]{1,4}\)|[ivxlcdmIVXLCDM]{1,6}[.)]+|[^\w\s]{1,3})"
)

# Never a sentence end (lower-cased, without the final period).
_ABBREVIATIONS = frozenset(
    "e.g i.e eg ie vs cf viz al approx resp esp ca incl dr mr mrs ms prof st jr sr fig figs eq eqs".split()
)
# Not a sentence end before a number ("No. 5", "Sec. 2", "Thm. 3").
_ABBREVIATIONS_BEFORE_NUMBER = frozenset(
    "no nos p pp vol ch sec thm lem def prop cor ex art par".split()
)
_OPENING_CHARS = frozenset("\"'\u201c\u2018\u00ab([{$\\*#`_")


def split_sentences(text: str, mode: Mode = "robust", max_chars: int = 400) -> list[Span]:
    """Split `text` into contiguous sentence spans covering it; whitespace goes with the sentence before it.

    robust: boundaries after sentence punctuation and at every line break, never inside math or code
    (see `protected_regions`); sentences longer than `max_chars` (ignoring surrounding whitespace) are
    cut at whitespace, or hard-cut where there is none, except that one protected region longer than
    `max_chars` is kept whole; a lone list marker ("1.", "(a)", "-") joins the next sentence.
    paper: the authors' `text.split(". ")` boundaries (max_chars unused). Offsets index `str` code points.
    """
    if mode not in ("robust", "paper"):
        raise ValueError(f"mode must be 'robust' or 'paper', got {mode!r}")
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    if not text.strip():
        return []
    if mode == "paper":
        return _to_spans(_paper_boundaries(text), text)
    regions = protected_regions(text, max_chars)
    starts = [r[0] for r in regions]
    boundaries = sorted(
        set(_line_boundaries(text, regions, starts)) | set(_punct_boundaries(text, regions, starts))
    )
    spans = _to_spans([0, *boundaries], text)
    spans = [
        piece for span in spans for piece in _bound_length(text, span, max_chars, regions, starts)
    ]
    return _merge_tiny(text, spans, max_chars)


def protected_regions(text: str, max_chars: int = 400) -> list[Span]:
    """Sorted, disjoint spans of math and code that no boundary may fall strictly inside.

    Fenced code (``` or ~~~), `$$..$$`, `\\[..\\]`, `\\(..\\)`, `\\begin{env}..\\end{env}` (nesting-aware),
    inline `$..$` (pandoc rules: no space inside the delimiters, closer not followed by a digit, no
    blank line) and inline `code`. An opener without a closer within the limit is plain text.
    """
    inline_limit = max(max_chars, _MIN_INLINE_LIMIT)
    display_limit = max(_DISPLAY_LIMIT_FACTOR * max_chars, _MIN_DISPLAY_LIMIT)
    regions: list[Span] = []
    # closer → position before which a failed search already found none; keeps runs of stray openers
    # ("$a $b $c ...", "\\[ \\[ ...") linear instead of limit × openers.
    searched: dict[str, int] = {}
    pos = 0
    while (m := _OPENER.search(text, pos)) is not None:
        end = _region_end(text, m, inline_limit, display_limit, searched)
        if end is None:
            pos = m.start() + 1
        else:
            regions.append((m.start(), end))
            pos = end
    return regions


def _region_end(
    text: str, m: re.Match[str], inline_limit: int, display_limit: int, searched: dict[str, int]
) -> int | None:
    kind = m.lastgroup if m.lastgroup != "name" else "env"
    start, after = m.start(), m.end()
    if kind == "fence":
        return _find_closer(
            text, m.group(), after, start + display_limit, searched, extend=m.group()[0]
        )
    if kind == "dd":
        return _find_closer(text, "$$", after, start + display_limit, searched)
    if kind == "bracket":
        return _find_closer(text, "\\]", after, start + display_limit, searched)
    if kind == "paren":
        return _find_closer(text, "\\)", after, start + inline_limit, searched)
    if kind == "env":
        return _env_end(text, m.group("name"), after, start + display_limit)
    if kind == "dollar":
        return _dollar_end(text, after, start + inline_limit, searched)
    newline = text.find("\n", after, start + inline_limit)
    return _find_closer(
        text, "`", after, newline if newline != -1 else start + inline_limit, searched
    )


def _find_closer(
    text: str, closer: str, after: int, limit: int, searched: dict[str, int], extend: str = ""
) -> int | None:
    begin = max(after, searched.get(closer, 0) - len(closer) + 1)
    i = text.find(closer, begin, limit)
    if i == -1:
        searched[closer] = max(searched.get(closer, 0), min(limit, len(text)))
        return None
    end = i + len(closer)
    while (
        extend and end < len(text) and text[end] == extend
    ):  # a ```` fence closes with all its ticks
        end += 1
    return end


def _env_end(text: str, name: str, after: int, limit: int) -> int | None:
    if text.find("\\end{" + name + "}", after, limit) == -1:
        return None
    tags = re.compile(r"\\(begin|end)\{" + re.escape(name) + r"\}")
    depth = 1
    for t in tags.finditer(text, after, min(limit, len(text))):
        depth += 1 if t.group(1) == "begin" else -1
        if depth == 0:
            return t.end()
    return None


def _dollar_end(text: str, after: int, limit: int, searched: dict[str, int]) -> int | None:
    if after >= len(text) or text[after].isspace():
        return None  # "$ 5" or a trailing "$" is currency or prose, not an opener
    # A "$" rejected as a closer for an earlier opener is rejected for this one too (the tests do not
    # depend on the opener), and a blank line stops both: resume where the last failed search ended.
    j = max(after, searched.get("$", 0))
    blank = _BLANK_LINE.search(text, j, min(limit, len(text)))
    stop = blank.start() if blank else limit
    while (k := text.find("$", j, stop)) != -1:
        before_ok = k > after and not text[k - 1].isspace() and text[k - 1] != "\\"
        if before_ok and not (k + 1 < len(text) and text[k + 1].isdigit()):
            return k + 1
        j = k + 1
    searched["$"] = max(searched.get("$", 0), min(stop, len(text)))
    return None


def _inside(p: int, regions: list[Span], starts: list[int]) -> bool:
    """Whether a boundary at p would fall strictly inside a protected region."""
    i = bisect.bisect_right(starts, p) - 1
    return i >= 0 and regions[i][0] < p < regions[i][1]


def _covers(c: int, regions: list[Span], starts: list[int]) -> bool:
    """Whether character c lies in a protected region."""
    i = bisect.bisect_right(starts, c) - 1
    return i >= 0 and c < regions[i][1]


def _line_boundaries(text: str, regions: list[Span], starts: list[int]) -> list[int]:
    out = []
    for m in _LINE_BREAK.finditer(text):
        if m.end() < len(text) and not _covers(m.start(), regions, starts):
            out.append(m.end())
    return out


def _punct_boundaries(text: str, regions: list[Span], starts: list[int]) -> list[int]:
    out = []
    for m in _SENTENCE_END.finditer(text):
        if (
            m.end() < len(text)
            and not _covers(m.start(), regions, starts)
            and _ends_sentence(text, m)
        ):
            out.append(m.end())
    return out


def _ends_sentence(text: str, m: re.Match[str]) -> bool:
    """Decide whether punctuation followed by whitespace (match m) ends a sentence."""
    term, closers, space = m.groups()
    nxt = text[m.end()]
    if any(c in space for c in "\n\r\u2028\u2029"):
        return True  # the line break ends it anyway
    if nxt.islower():
        return False  # "approx. equal", "1.666... which", "k=6 works.. k=7" (a variable)
    if "?" in term or "!" in term:
        prev = text[m.start() - 1] if m.start() else ""
        if term == "!" and not closers and (prev.isalnum() or prev in ")]}") and nxt.isdigit():
            return False  # "3! 2! = 12": factorials
        return _starts_sentence(nxt)
    if term.count(".") >= 3 or "\u2026" in term:
        return (
            nxt.isupper() or nxt in "\"'\u201c\u2018*#"
        )  # ellipsis: "Hmm... Let me" but "1, 2, ... 10"
    return _period_ends_sentence(text, m.start(), nxt)


def _period_ends_sentence(text: str, dot: int, nxt: str) -> bool:
    token_start = _LAST_TOKEN.search(text, max(0, dot - 64), dot).start()  # type: ignore[union-attr]  # \S*$ always matches
    core = text[token_start:dot].lstrip("\"'([{*_").rstrip(".")
    lower = core.lower()
    if lower in _ABBREVIATIONS or _DOTTED_ABBREV.fullmatch(core):
        return False
    if lower in _ABBREVIATIONS_BEFORE_NUMBER and nxt.isdigit():
        return False
    if lower == "etc":
        return nxt.isupper()
    if _ENUM_TOKEN.fullmatch(core) and _at_line_start(text, token_start):
        return False  # "1. First", "a. ...", "- iv. ..." list markers at the start of a line
    return _starts_sentence(nxt)


def _at_line_start(text: str, i: int) -> bool:
    """Whether only Markdown list/header/quote markers precede position i on its line."""
    lo = max(0, i - 32)  # bounded look-back keeps 100k-char lines linear
    line_start = max(text.rfind(c, lo, i) for c in "\n\r") + 1
    if line_start == 0 and lo > 0:
        return False
    return _MARKDOWN_LINE_PREFIX.fullmatch(text, line_start, i) is not None


def _starts_sentence(c: str) -> bool:
    return c.isupper() or c.isdigit() or c in _OPENING_CHARS


def _to_spans(boundaries: list[int], text: str) -> list[Span]:
    first = len(text) - len(text.lstrip())  # leading whitespace belongs to the first sentence
    cuts = sorted({b for b in boundaries if first < b < len(text)})
    edges = [0, *cuts, len(text)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def _content(text: str, span: Span) -> Span:
    """The span without surrounding whitespace."""
    a, b = span
    piece = text[a:b]
    return a + len(piece) - len(piece.lstrip()), a + len(piece.rstrip())


def _bound_length(
    text: str, span: Span, max_chars: int, regions: list[Span], starts: list[int]
) -> list[Span]:
    """Cut a sentence longer than max_chars into chunks (whitespace first, hard cut if none)."""
    pos, end = _content(text, span)
    if end - pos <= max_chars:
        return [span]
    cuts = []
    while end - pos > max_chars:
        q = _cut_point(text, pos, end, max_chars, regions, starts)
        if q is None:
            break
        cuts.append(q)
        pos = q
    edges = [span[0], *cuts, span[1]]
    return list(zip(edges[:-1], edges[1:], strict=True))


def _cut_point(
    text: str, pos: int, end: int, max_chars: int, regions: list[Span], starts: list[int]
) -> int | None:
    """The next chunk start after pos: after the last usable whitespace within max_chars, else a hard cut."""
    limit = pos + max_chars
    best = after_punct = None
    ws: re.Match[str] | None  # the loop's whitespace, later reused for the tail search (may miss)
    for ws in _WHITESPACE.finditer(text, pos + 1, min(limit + 1, end)):
        if _inside(ws.start(), regions, starts):
            continue
        best = ws.start()
        if text[ws.start() - 1] in ",;:" and ws.start() >= pos + max_chars // 2:
            after_punct = ws.start()  # prefer a clause boundary in the second half of the window
    chosen = after_punct if after_punct is not None else best
    if chosen is not None:
        return _WHITESPACE.match(text, chosen).end()  # type: ignore[union-attr]  # chosen is a whitespace start
    if not _inside(limit, regions, starts):
        return limit
    r0, r1 = regions[bisect.bisect_right(starts, limit) - 1]
    if r0 > pos:
        return r0
    # One region longer than max_chars starts here: keep it whole, with a little trailing punctuation.
    if end - r1 <= _REGION_TAIL_SLACK:
        return None
    ws = _WHITESPACE.search(text, r1, r1 + _REGION_TAIL_SLACK)
    q = (
        _WHITESPACE.match(text, ws.start()).end()  # type: ignore[union-attr]
        if ws and not _inside(ws.start(), regions, starts)
        else r1
    )
    return q if q < end else None


def _merge_tiny(text: str, spans: list[Span], max_chars: int) -> list[Span]:
    """Merge list markers and lone symbols into the next sentence (the previous one at the end)."""

    def fits(a: int, b: int) -> bool:
        lo, hi = _content(text, (a, b))
        return hi - lo <= max_chars

    out: list[Span] = []
    carry: int | None = None  # start of tiny pieces waiting to join the next sentence
    for i, (a, b) in enumerate(spans):
        start = a if carry is None else carry
        lo, hi = _content(text, (a, b))
        tiny = bool(_TINY.fullmatch(text, lo, hi)) or hi - lo <= 2
        if tiny and i + 1 < len(spans) and fits(start, spans[i + 1][1]):
            carry = start
            continue
        if tiny and carry is None and out and fits(out[-1][0], b):
            out[-1] = (out[-1][0], b)
            continue
        out.append((start, b))
        carry = None
    return out


def _paper_boundaries(text: str) -> list[int]:
    """After each ". " separator of `text.split(". ")`, moved past whitespace that follows it."""
    out = [0]
    i = text.find(". ")
    while i != -1:
        b = i + 2
        while b < len(text) and text[b].isspace():
            b += 1
        out.append(b)
        i = text.find(". ", i + 2)
    return out


def read_text(path: str) -> str:
    """UTF-8 text with line endings untouched, so offsets index the file's own characters."""
    import sys

    try:
        if path == "-":
            return sys.stdin.buffer.read().decode("utf-8")
        with open(path, encoding="utf-8", newline="") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"{'<stdin>' if path == '-' else path}: not UTF-8 text ({e})") from None
