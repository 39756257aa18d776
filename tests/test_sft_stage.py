"""The sft_data stage streamed: workers tokenize input parts into shard parts (real Ray, real SmolLM2
tokenizer); the result equals the in-memory `build_shards`, train reads it, and a killed stage resumes
with the missing parts only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from palign_ray import records as R
from palign_ray.artifacts import StageDir
from palign_ray.config import AlignConfig, Config, RayConfig
from palign_ray.sft import data as D
from palign_ray.sft.records import META_FILE, build_shards
from palign_ray.sft.stage import build_stage_shards

CFG = Config(
    align=AlignConfig(max_seq_len=160),
    ray=RayConfig(num_cpus=4, num_actors=1, num_cpus_per_actor=0.5, max_concurrent_batches=2),
)


def _row(pid: str, k: int, continuation: str | None = None) -> dict[str, Any]:
    return {
        R.PROBLEM_ID: pid,
        "question": f"What is {k}+4?",
        "answer": str(k + 4),
        "prefix": f"We add {k} and 4. ",
        "continuation": f"\n{k} + 4 = {k + 4}, so the answer is \\boxed{{{k + 4}}}.\n"
        if continuation is None
        else continuation,
        "sample_index": 0,
    }


# align's parts: one problem's samples (and a repeated one) share a part, as align writes them
PARTS = [
    [
        _row("a", 1),
        _row("a", 1),
        {**_row("a", 1, "\n1 + 4 = 5. Checked: \\boxed{5}.\n")},
        _row("b", 2),
    ],
    [_row("c", 3, ""), _row("d", 4), _row("e", 5, "long " * 400)],
    [_row("f", 6)],
]


def _input(tmp_path: Path) -> StageDir:
    src = StageDir(tmp_path / "align")
    for rows in PARTS:
        src.write_part(rows, [])
    return src


def _examples(d: Path) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True) for f in D.shard_files(d) for r in _read(f))


def _read(f: str) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(f).to_pylist()


@pytest.mark.timeout(900)
def test_streamed_shards_equal_the_in_memory_build_and_train_reads_them(
    tmp_path: Path, ray_session: Any, tokenizer: Any
) -> None:
    src, out = _input(tmp_path), StageDir(tmp_path / "sft_data" / "shards")
    summary, res = build_stage_shards(CFG, "palign", src.output_files(), out)
    ref = build_shards(
        [r for rows in PARTS for r in rows], CFG, "palign", tmp_path / "ref", tokenizer=tokenizer
    )
    # one shard part per input part, tokenized on one actor (no engine)
    assert res.num_parts == 3 and res.actors_used == 1 and len(summary["shards"]) == 3
    assert _examples(out.root) == _examples(tmp_path / "ref")
    assert {k: v for k, v in summary.items() if k != "shards"} == {
        k: v for k, v in ref.items() if k != "shards"
    }
    assert summary["reasons"] == {"duplicate_example": 1, "missing_continuation": 1, "too_long": 1}
    assert summary["num_in"] == 8 == summary["num_out"] + summary["num_quarantined"]
    meta = json.loads((out.root / META_FILE).read_text())
    assert sorted(meta["parts"]) == sorted(summary["shards"])
    assert meta["num_examples"] == summary["num_examples"] == 5
    assert meta["chat_template"] == tokenizer.chat_template
    # what train does with a shard directory: every row validates
    rows = [r for f in D.shard_files(out.root) for r in _read(f)]
    examples, bad = D.validate_rows(rows, CFG.sft.max_seq_len)
    assert len(examples) == 5 and not bad


@pytest.mark.timeout(900)
def test_a_killed_sft_data_stage_tokenizes_only_the_missing_parts(
    tmp_path: Path, ray_session: Any
) -> None:
    src, out = _input(tmp_path), StageDir(tmp_path / "shards")
    first, _ = build_stage_shards(CFG, "palign", src.output_files(), out)
    before = _examples(out.root)
    # killed after two parts were committed: the third's marker never landed
    (c,) = [c for c in out.commits() if c["problem_ids"] == ["c", "d", "e"]]
    (out.commits_dir / f"{c['part']}.json").unlink()
    (out.root / META_FILE).unlink()
    with pytest.raises(ValueError, match="does not hold"):
        _stale_meta(out)
    summary, res = build_stage_shards(CFG, "palign", src.output_files(), out)
    assert (res.num_done_before, res.num_processed, res.num_parts) == (5, 3, 1)
    assert _examples(out.root) == before
    assert {k: v for k, v in summary.items() if k != "shards"} == {
        k: v for k, v in first.items() if k != "shards"
    }


def _stale_meta(out: StageDir) -> None:
    """A meta listing a part that is not committed is refused by train's reader."""
    (out.root / META_FILE).write_text(json.dumps({"parts": ["part-missing.parquet"]}))
    D.shard_files(out.root)
