"""Answer grading: last boxed answer, cheap normalised comparison, math-verify in a killable child process."""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import math
import os
import queue
import re
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

log = logging.getLogger(__name__)

GRADER_MODES = ("boxed", "paper")
REASONS = ("correct", "wrong_answer", "no_boxed_answer", "grader_timeout", "grader_error")
WORKER_START_TIMEOUT_S = (
    120.0  # a cold child on a loaded 2-core box; not charged to the per-item bound
)
_CACHE_MAX = 200_000
MAX_BOXES_TRIED = 8
MAX_BOX_CHARS = 20_000
MAX_IDLE_WORKERS = 4  # grading children kept warm between calls (~50 MB each)


@dataclass(frozen=True)
class Grade:
    correct: bool
    extracted: str | None
    reason: str  # one of REASONS


# ---------------------------------------------------------------------------------------------
# Extraction

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")


def _braced(text: str, start: int) -> str | None:
    """Content of the brace group opening at text[start] == '{', or None if it never closes."""
    depth, i, stop = 0, start, min(len(text), start + MAX_BOX_CHARS)
    while i < stop:
        ch = text[i]
        if ch == "\\":  # skip the escaped character: \{ and \} are literal braces, \\ a line break
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
        i += 1
    return None


def _box_content(text: str, end: int) -> str | None:
    """What follows a `\\boxed` ending at `end`: a brace group, or `\\boxed 5` (one bare token)."""
    rest = text[end:]
    stripped = rest.lstrip()
    if stripped.startswith("{"):
        return _braced(text, end + len(rest) - len(stripped))
    if rest[:1].isspace():
        m = re.match(r"[^\s$]+", stripped)
        return m.group(0).rstrip(".,;") if m else None
    return None


def extract_boxed(text: str) -> str | None:
    """Content of the LAST non-empty `\\boxed{...}` / `\\fbox{...}` (nested braces ok), else None.

    Empty boxes (a model echoing the instruction "within \\boxed{}") and a last box cut off by the
    token limit are skipped in favour of the previous complete one.
    """
    if not isinstance(text, str):
        return None
    # Only the last few boxes are tried and each scan is bounded: unclosed boxes stay linear.
    for m in list(_BOX_RE.finditer(text))[-MAX_BOXES_TRIED:][::-1]:
        content = _box_content(text, m.end())
        if content is not None and content.strip():
            return content.strip()
    return None


def gold_from_solution(solution: str) -> str | None:
    """Gold answer of a worked solution: GSM8K `#### 1,234` → "1234", else its last boxed answer."""
    if not isinstance(solution, str):
        return None
    if "####" in solution:
        tail = solution.rsplit("####", 1)[1].strip().replace(",", "").strip("$ ")
        return _canonical_number(tail) or (tail or None)
    return extract_boxed(solution)


def normalize_gold(answer: object) -> str:
    """A gold answer as a clean string: "025" → "25", 12.0 → "12", " x " → "x"; None/NaN/"" → ValueError."""
    if answer is None or isinstance(answer, bool):
        raise ValueError(f"gold answer {answer!r} is missing or not an answer")
    if isinstance(answer, float):
        if not math.isfinite(answer):
            raise ValueError(f"gold answer {answer!r} is not a finite number")
        return str(int(answer)) if answer.is_integer() else repr(answer)
    if isinstance(answer, int):
        return str(answer)
    text = str(answer).strip()
    if len(text) >= 2 and text[0] == "$" and text[-1] == "$":
        text = text.strip("$").strip()
    if not text:
        raise ValueError(f"gold answer {answer!r} is empty")
    return _canonical_number(text) or text


# ---------------------------------------------------------------------------------------------
# Cheap comparison

_NUMBER_RE = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")
_THOUSANDS_RE = re.compile(r"[+-]?\d{1,3}(,\d{3})+(\.\d+)?")
# A number followed by something that may be a unit: "10 \text{ cm}", "10\mbox{cm}", "10 cm^2",
# "10 square units" (a bare word needs a space and two letters, so "5x" and "5 m" never are). Only one
# whose words are all in _UNIT_WORDS is stripped: "5 pi", "2 \mathrm{i}" or "3 e" are other answers.
_UNIT_RE = re.compile(
    r"^(.*?\d)(?:\s*\\(?:text|mbox|mathrm)\{([^{}]*)\}|\s+([a-zA-Z]{2,}(?:[ /][a-zA-Z]+)*))"
    r"(?:\^\{?[23]\}?)?$"
)
_UNIT_WORDS = frozenset(
    """
    mm cm m km in inch inches ft foot feet yd yard yards mile miles meter meters metre metres millimeter millimeters
    centimeter centimeters kilometer kilometers g mg kg gram grams kilogram kilograms milligram milligrams lb lbs pound
    pounds oz ounce ounces ton tons ml l liter liters litre litres milliliter milliliters gallon gallons cup cups quart
    quarts pint pints s sec secs second seconds min mins minute minutes h hr hrs hour hours day days week weeks month
    months year years dollar dollars cent cents euro euros yuan deg degree degrees rad radian radians mph kph
    unit units square sq cubic per percent percentage pct
""".split()
)
_TIMES_CONSTANT_RE = re.compile(
    r"([+-]?(?:\d+(?:\.\d*)?|\.\d+))(?:i|e|pi|\\pi)"
)  # a normal form: "2i", "5\pi"
_SPACING_RE = re.compile(r"\\[!,;:> ]|\\q?quad|~")
_TEXT_RE = re.compile(r"\\(?:text|textbf|mbox|mathrm)\{([^{}]*)\}")


def _canonical_number(s: str) -> str | None:
    """ "0025" → "25", "12.50" → "12.5", "-0" → "0"; None when `s` is not a plain decimal number."""
    if not _NUMBER_RE.fullmatch(s):
        return None
    try:
        d = Decimal(s)
    except InvalidOperation:
        return None
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def _is_unit(text: str) -> bool:
    """'cm', ' square units', 'km/h': every word a known unit word (case-insensitive)."""
    words = re.split(r"[\s/]+", text.strip().lower())
    return bool(words) and all(w in _UNIT_WORDS for w in words)


def _canonical(s: str) -> str:
    """A normal form for string comparison; equal forms mean equal answers (never the reverse)."""
    s = s.strip().strip("$").strip()
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\displaystyle", "")
    s = s.replace("\\left", "").replace("\\right", "")
    s = _SPACING_RE.sub(" ", s)
    for deg in ("^{\\circ}", "^\\circ", "°", "\\%", "%", "\\$"):
        s = s.replace(deg, "")
    s = s.strip().rstrip(".").strip()
    m = _UNIT_RE.match(s)
    if (
        m
        and _NUMBER_RE.fullmatch(m.group(1).replace(",", "").strip())
        and _is_unit(m.group(2) or m.group(3))
    ):
        s = m.group(1)  # "10 \text{ cm}" / "10 cm" → "10"
    s = _TEXT_RE.sub(r"\1", s)
    s = re.sub(r"\s+", "", s)
    if _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "")
    return _canonical_number(s) or s


def _strip_variable(pred: str, gold: str) -> str:
    """`x = 5` against a gold of `5` compares the right-hand side."""
    m = re.match(r"^\s*[a-zA-Z]\s*=\s*(.+)$", pred)
    return m.group(1) if m and "=" not in gold else pred


def _cheap_verdict(pred: str, gold: str) -> bool | None:
    """True/False when the normal forms decide it (equal, or two different plain numbers); else None."""
    a, b = _canonical(_strip_variable(pred, gold)), _canonical(gold)
    if a == b:
        return True
    # Two different plain numbers are a wrong answer, unless a percent sign makes "50%" vs "0.5" arguable.
    if (
        _canonical_number(a) is not None
        and _canonical_number(b) is not None
        and "%" not in pred + gold
    ):
        return False
    # A nonzero multiple of i, e or pi is never a plain number; decided here because math-verify drops
    # "\mathrm{i}" and "\text{ i}" like units and would call "2 \mathrm{i}" equal to 2.
    m = _TIMES_CONSTANT_RE.fullmatch(a)
    if m and _canonical_number(b) is not None and _canonical_number(m.group(1)) != "0":
        return False
    return None


# ---------------------------------------------------------------------------------------------
# math-verify in a child process
#
# math-verify bounds time with signal.alarm, which only works in the main thread; grading runs in
# worker threads and Ray actors. So parse/verify run with their own timeouts disabled inside a
# reused child (`python -c '...grading import _serve; _serve()'`, JSON lines over pipes), killed and replaced when
# one item exceeds its bound. A plain subprocess (not multiprocessing) never re-imports __main__;
# `-c` (not `-m`) so this module needs no `__main__` block.


def _mv_compare(pred: str, gold: str, whole_text: bool) -> tuple[bool, str | None]:
    """math-verify's verdict and the answer it extracted; `pred` is a boxed answer or a whole output."""
    from math_verify import parse, verify

    gold_parsed = parse(f"${gold}$", parsing_timeout=None)
    pred_parsed = parse(pred if whole_text else f"\\boxed{{{pred}}}", parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return False, None
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None)), str(pred_parsed[-1])


def _serve() -> None:
    """Child loop: one JSON request per line in, one JSON reply per line out."""
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    import math_verify  # noqa: F401 - import before "ready" so the first item is not charged for it

    # The protocol owns the real stdout; anything a library prints goes to stderr instead.
    out = sys.stdout
    sys.stdout = sys.stderr
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        pred, gold, whole_text = json.loads(line)
        try:
            ok, extracted = _mv_compare(pred, gold, whole_text)
            reply = {"ok": ok, "extracted": extracted}
        except Exception as e:  # noqa: BLE001 - any parser failure is a grader_error, not a crash
            reply = {"error": f"{type(e).__name__}: {e}"[:500]}
        out.write(json.dumps(reply) + "\n")
        out.flush()


class _Worker:
    """One child process running `_serve`."""

    def __init__(self) -> None:
        env = dict(os.environ)
        pkg_root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH", "")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from palign_ray.grading import _serve; _serve()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            close_fds=True,
        )
        self._buf = b""
        if self._readline(WORKER_START_TIMEOUT_S) != "ready":
            self.kill()
            raise RuntimeError("math-verify grading worker failed to start")

    def _readline(self, timeout_s: float) -> str | None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:  # the child died
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def ask(
        self, pred: str, gold: str, whole_text: bool, timeout_s: float
    ) -> dict[str, object] | None:
        """The child's reply, or None on timeout or death (the caller then kills this worker)."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps([pred, gold, whole_text]) + "\n").encode())
            self.proc.stdin.flush()
        except OSError:
            return None
        line = self._readline(timeout_s)
        return json.loads(line) if line else None

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


_IDLE: queue.LifoQueue[_Worker] = queue.LifoQueue()  # one worker per concurrently grading thread


def _acquire() -> _Worker:
    try:
        return _IDLE.get_nowait()
    except queue.Empty:
        return _Worker()


@atexit.register
def shutdown_workers() -> None:
    """Kill idle grading children (also called at interpreter exit)."""
    while True:
        try:
            _IDLE.get_nowait().kill()
        except queue.Empty:
            return


def _verify_bounded(
    pred: str, gold: str, timeout_s: float, whole_text: bool = False
) -> tuple[str, str | None]:
    """math-verify's verdict as (reason code, extracted answer), within `timeout_s` seconds."""
    try:
        worker = _acquire()
    except (OSError, RuntimeError) as e:
        log.warning("grading worker unavailable (%s)", e)
        return "grader_error", None
    reply = worker.ask(pred, gold, whole_text, timeout_s)
    if reply is None:
        alive = worker.proc.poll() is None
        worker.kill()
        return ("grader_timeout" if alive else "grader_error"), None
    if _IDLE.qsize() < MAX_IDLE_WORKERS:
        _IDLE.put(worker)
    else:
        worker.kill()
    if "error" in reply:
        log.debug("math-verify error on %r vs %r: %s", pred[:200], gold, reply["error"])
        return "grader_error", None
    extracted = reply.get("extracted")
    return ("correct" if reply["ok"] else "wrong_answer"), (
        str(extracted) if extracted is not None else None
    )


# ---------------------------------------------------------------------------------------------
# Public entry point

_cache: dict[tuple[str, str, str], tuple[str, str | None]] = {}
_cache_lock = threading.Lock()


def _cached(
    kind: str, pred: str, gold: str, compute: Callable[[], tuple[str, str | None]]
) -> tuple[str, str | None]:
    """Memoise decided verdicts on (kind, prediction, gold); timeouts and errors are retried next time."""
    key = (kind, pred if len(pred) < 1000 else hashlib.sha256(pred.encode()).hexdigest(), gold)
    with _cache_lock:
        hit = _cache.get(key)
    if hit is not None:
        return hit
    result = compute()
    if result[0] in ("correct", "wrong_answer"):
        with _cache_lock:
            if len(_cache) >= _CACHE_MAX:
                _cache.clear()
            _cache[key] = result
    return result


def compare(extracted: str, gold: str, timeout_s: float = 10.0) -> str:
    """Reason code for an extracted (boxed) answer against a gold answer: cheap path, else math-verify."""

    def compute() -> tuple[str, str | None]:
        cheap = _cheap_verdict(extracted, gold)
        if cheap is not None:
            return ("correct" if cheap else "wrong_answer"), extracted
        return _verify_bounded(extracted, gold, timeout_s)

    return _cached("boxed", extracted, gold, compute)[0]


def grade(prediction: str, gold: str, timeout_s: float = 10.0, mode: str = "boxed") -> Grade:
    """Grade a model output against a gold answer within `timeout_s` (per comparison).

    mode "boxed": the last boxed answer only. mode "paper": the authors' grader, where math-verify on
    the whole output (no box needed, as in their evaluation script) can also make a sample correct.
    """
    if mode not in GRADER_MODES:
        raise ValueError(f"grading mode {mode!r} is not one of {GRADER_MODES}")
    gold = str(gold).strip()
    extracted = extract_boxed(prediction)
    reason = compare(extracted, gold, timeout_s) if extracted is not None else "no_boxed_answer"
    if reason == "correct":
        return Grade(True, extracted, reason)
    if mode == "paper":
        text_reason, text_answer = _cached(
            "text", prediction, gold, lambda: _verify_bounded(prediction, gold, timeout_s, True)
        )
        if text_reason == "correct":
            return Grade(True, text_answer, "correct")
        if reason in ("no_boxed_answer", "wrong_answer") and text_reason in (
            "grader_timeout",
            "grader_error",
        ):
            reason = text_reason
    return Grade(False, extracted, reason)
