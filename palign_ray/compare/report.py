"""`<run_dir>/compare/`: compare.json, samples.parquet, report.md and the PNGs of a `palign compare` run (Table-1 layout).

Collects every method's evaluations and stage facts and writes the files. The numbers come from `table`
(scores from each evaluation's per-sample labels, so differences are paired problem by problem), `groups`
(the novel-answer subset and templates) and `facts` (counts, tokens and wall times from the stage manifests
and commit markers); `markdown` and `plots` render them. Whatever has not run yet shows as "—".
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from palign_ray.artifacts import write_json
from palign_ray.compare.facts import method_facts
from palign_ray.compare.groups import problem_groups
from palign_ray.compare.markdown import render_markdown
from palign_ray.compare.plots import write_plots
from palign_ray.compare.table import (
    BASE,
    base_consistency,
    correct_of,
    eval_rows,
    mean_tokens,
    pass_ks,
    subset_scores,
    table_one,
)
from palign_ray.config import Config
from palign_ray.pipeline import output_in, stage_output

log = logging.getLogger(__name__)


def write_compare_report(cfg: Config, runs: list[Any], out: Path, baseline: str) -> dict[str, Any]:
    """Collect, compute and write compare.json, report.md and the PNGs; returns compare.json's dict.

    `runs`: palign_ray.compare.run.MethodRun per method; paired differences are taken against `baseline`.
    """
    n = cfg.eval.num_samples
    trained, bases = {}, {}
    for r in runs:
        if "eval" in r.dirs and (t := eval_rows(stage_output(r.dirs, "eval"))) is not None:
            trained[r.label] = (correct_of(t, n), mean_tokens(t[0]))
        base_dir = r.dirs.get("base_eval")
        if base_dir is not None and str(base_dir) not in bases:  # a shared base_eval counts once
            if (b := eval_rows(output_in(base_dir, "base_eval"))) is not None:
                bases[str(base_dir)] = (correct_of(b, n), mean_tokens(b[0]))
    rows = ({BASE: next(iter(bases.values()))[0]} if bases else {}) | {
        m: c for m, (c, _) in trained.items()
    }
    lengths = ({BASE: next(iter(bases.values()))[1]} if bases else {}) | {
        m: ln for m, (_, ln) in trained.items()
    }
    benches = sorted({b for c in rows.values() for b in c})
    ks = pass_ks(list(rows.values()))
    nb, seed = cfg.eval.bootstrap_samples, cfg.run.seed
    shared: dict[str, list[str]] = {}
    for r in runs:
        for d in r.dirs.values():
            shared.setdefault(str(d), []).append(r.label)
    result: dict[str, Any] = {
        "run_dir": cfg.run.run_dir,
        "methods": [r.label for r in runs],
        "benchmarks": benches,
        "ks": ks,
        "baseline": baseline,
        "eval": {
            "num_samples": n,
            "num_problems": cfg.eval.num_problems,
            "seed": seed,
            "temperature": cfg.eval.temperature,
            "top_p": cfg.eval.top_p,
            "max_tokens": cfg.eval.max_tokens,
        },
        **table_one(rows, baseline, benches, ks, nb, seed),
        "mean_response_tokens": lengths,
        "subsets": subset_scores(rows, problem_groups(cfg, runs), baseline, benches, ks, nb, seed),
        "base_consistency": base_consistency({m: c for m, (c, _) in bases.items()}),
        "facts": {r.label: method_facts(r, shared) for r in runs},
        "report": str(out / "report.md"),
    }
    write_json(out / "compare.json", result)
    write_table_samples(runs, out, n)
    write_plots(result, out)
    (out / "report.md").write_text(render_markdown(result))
    log.info("wrote %s", out / "report.md")
    return result


def write_table_samples(runs: list[Any], out: Path, num_samples: int) -> Path:
    """`out/samples.parquet`: every sample Table 1 scores, one evaluation read at a time.

    The base rows come from the first finished base_eval, the one the table shows.
    """
    from palign_ray.compare.samples import write_samples

    base = next(
        (
            done
            for r in runs
            if "base_eval" in r.dirs
            and ((done := stage_output(r.dirs, "base_eval")) / ".done").is_file()
        ),
        None,
    )
    sources = [(BASE, base)] if base is not None else []
    sources += [(r.label, stage_output(r.dirs, "eval")) for r in runs if "eval" in r.dirs]
    evaluations = ((m, rows) for m, d in sources if (rows := eval_rows(d)) is not None)
    write_samples(out / "samples.parquet", evaluations, num_samples)
    return out / "samples.parquet"
