"""Groups of the built-in held-out problems: by template, and the novel-answer subset (no training problem has the answer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from palign_ray.artifacts import StageDir
from palign_ray.config import Config
from palign_ray.pipeline import stage_output


def problem_groups(cfg: Config, runs: list[Any]) -> dict[str, Any]:
    """Held-out built-in problems by template, and those whose gold answer no training problem has.

    A held-out problem "recalls" an answer when a training problem of the same template (any training
    problem, where templates are unknown) has the same normalised gold; the rest are the novel-answer
    subset. Only the built-in benchmark carries templates and is grouped here.
    """
    from palign_ray.benchmarks import BUILTIN, load_benchmark
    from palign_ray.grading import normalize_gold

    e = cfg.eval
    if BUILTIN not in e.benchmarks:
        return {}
    problems_dir = next(
        (stage_output(r.dirs, "problems") for r in runs if "problems" in r.dirs), None
    )
    train = _training_answers(problems_dir) if problems_dir is not None else None
    held, _ = load_benchmark(
        BUILTIN, e.data_dir, e.num_problems, e.builtin_seed, builtin_split=e.builtin_split
    )
    template = _builtin_templates(e.num_problems, e.builtin_seed, e.builtin_split)
    groups: dict[str, Any] = {"num_problems": len(held), "templates": {}}
    for row in held:
        groups["templates"].setdefault(template.get(row["problem_id"], "?"), set()).add(
            row["problem_id"]
        )
    if train is not None:
        templated = {(t, a) for t, a in train if t is not None}
        anywhere = {a for _, a in train}
        groups["novel_answer"] = {
            row["problem_id"]
            for row in held
            if (
                (template.get(row["problem_id"]), normalize_gold(row["answer"])) not in templated
                if templated
                else normalize_gold(row["answer"]) not in anywhere
            )
        }
        groups["definition"] = (
            "gold answer not among the training problems' answers of the same template"
            if templated
            else "gold answer not among the training problems' answers"
        )
    return groups


def _training_answers(problems_dir: Path) -> list[tuple[str | None, str]] | None:
    """(template or None, normalised gold) of every training problem, or None before the problems stage ran."""
    import pyarrow.parquet as pq

    from palign_ray.grading import normalize_gold

    stage = StageDir(problems_dir)
    if not stage.manifest_path.exists():
        return None
    out: list[tuple[str | None, str]] = []
    for f in stage.output_files():  # two columns, read file by file
        names = pq.read_schema(f).names
        t = pq.read_table(f, columns=[c for c in ("answer", "template") if c in names]).to_pylist()
        out += [(r.get("template"), normalize_gold(r["answer"])) for r in t]
    return out


def _builtin_templates(num_problems: int, seed: int, split: str) -> dict[str, str]:
    """Evaluation id (`builtin/<id>`) → template of the built-in held-out problems (as benchmarks loads them)."""
    from palign_ray.benchmarks import BUILTIN
    from palign_ray.builtin import builtin_problems

    return {
        f"{BUILTIN}/{r['problem_id']}": r["template"]
        for r in builtin_problems(num_problems or 32, seed, split)  # type: ignore[arg-type]
    }
