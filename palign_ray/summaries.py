"""Each stage's own words from its manifest: the console line's details and the report's in/out cells (pure).

The stage table (`pipeline.STAGES`) names these per row, so console and report ask the row instead of
branching on stage names. A function takes the manifest's JSON dict (what `Manifest.to_dict` gives).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

EVALUATED = ("base", "trained")  # an evaluation stage's manifest keys, one headline per model


def problems_line(m: Mapping[str, Any]) -> str:
    """The problems stage's screen (duplicates, benchmark overlap), when it screened."""
    screen = (m.get("summary") or {}).get("screen")
    return screen_line(screen) if screen else ""


def screen_line(screen: Mapping[str, Any]) -> str:
    """The problems screen in a few words: duplicates, and what was checked against which benchmarks."""
    against = screen.get("decontaminated_against") or []
    dup = f"{screen.get('num_duplicates', 0)} duplicates" if screen.get("dedup") else "no dedup"
    if not against:
        return f"{dup}, no benchmark overlap check ({'; '.join(screen.get('not_checked', [])) or 'none listed'})"
    return f"{dup}, {screen.get('num_contaminated', 0)} overlapping {', '.join(against)}"


def train_line(m: Mapping[str, Any]) -> str:
    """Examples, steps and the final loss of a training."""
    t = m.get("metrics", {})
    loss = t.get("final_loss")
    return f"{t.get('num_examples', 0)} examples, {t.get('num_steps', 0)} steps" + (
        f", final loss {loss:.3f}" if isinstance(loss, (int, float)) else ""
    )


def eval_line(m: Mapping[str, Any]) -> str:
    """base → trained headline scores (the models an evaluation stage's manifest lists)."""
    return " → ".join(f"{k} {_pass1(m[k])}" for k in EVALUATED if m.get(k))


def _pass1(headline: Mapping[str, Any]) -> str:
    pk = headline.get("average", {}).get("pass@k", {})
    return ", ".join(f"pass@{k} {v:.3f}" for k, v in list(pk.items())[:2]) or "no score"


def train_cells(m: Mapping[str, Any]) -> tuple[Any, Any] | None:
    """Report cells: examples in, a model out (None before the manifest has metrics)."""
    t = m.get("metrics")
    if not t:
        return None
    return t.get("num_examples", "–"), f"model ({t.get('num_steps', '?')} steps)"


def eval_cells(m: Mapping[str, Any]) -> tuple[Any, Any]:
    """Report cells: the models evaluated."""
    return m.get("num_input", "–"), ", ".join(k for k in EVALUATED if m.get(k)) or "–"
