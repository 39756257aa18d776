"""SFT shards → validated examples → a deterministic per-epoch plan of packed micro-batches (pure)."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from palign_ray import records as R
from palign_ray.artifacts import COMMITS, TMP_PREFIX, StageDir, quarantine_row

STAGE = "sft"
INPUT_IDS = "input_ids"
LOSS_MASK = "loss_mask"
NUM_TOKENS = "num_tokens"
NUM_LOSS_TOKENS = "num_loss_tokens"
SHARD_COLUMNS = (R.PROBLEM_ID, INPUT_IDS, LOSS_MASK, NUM_TOKENS, NUM_LOSS_TOKENS)
META_FILE = "sft_meta.json"
IGNORE_INDEX = -100  # cross-entropy ignores these labels (prompt tokens, padding, example starts)


@dataclass(frozen=True)
class Example:
    """One tokenized SFT example; `key` orders examples independently of read order."""

    problem_id: str
    input_ids: tuple[int, ...]
    loss_mask: tuple[int, ...]

    @property
    def key(self) -> tuple[str, tuple[int, ...]]:
        return (self.problem_id, self.input_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)


def shard_files(data_dir: str | Path) -> list[str]:
    """The `part-*.parquet` files of a shard directory (`.tmp-*` partial writes are skipped)."""
    d = Path(data_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"SFT shard directory {d} does not exist")
    if (d / COMMITS).is_dir():  # the pipeline's sft_data stage: its committed parts only
        files = sorted(str(p) for p in StageDir(d).output_files())
    else:
        files = sorted(
            str(p) for p in d.glob("part-*.parquet") if not p.name.startswith(TMP_PREFIX)
        )
    if not files:
        raise FileNotFoundError(f"SFT shard directory {d} has no part-*.parquet files")
    listed = read_meta(d).get("parts")  # written last by palign sft-data: the complete set
    if listed is not None and sorted(Path(f).name for f in files) != sorted(listed):
        raise ValueError(
            f"SFT shard directory {d} does not hold the {len(listed)} parts its {META_FILE} lists "
            f"(found {len(files)}): an interrupted or mixed write; rerun palign sft-data"
        )
    return files


def read_meta(data_dir: str | Path) -> dict[str, Any]:
    """`sft_meta.json` (model, chat_template, max_seq_len, num_examples), or {} when absent."""
    path = Path(data_dir) / META_FILE
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    return meta


def _row_problem(row: dict[str, Any], max_seq_len: int) -> tuple[str, str] | None:
    """(reason, detail) when a shard row cannot be trained on, else None."""
    ids, mask = row.get(INPUT_IDS), row.get(LOSS_MASK)
    if ids is None or mask is None:
        return "missing_column", f"{INPUT_IDS} or {LOSS_MASK} is null"
    if len(ids) != len(mask):
        return "length_mismatch", f"{len(ids)} input_ids but {len(mask)} loss_mask entries"
    if row.get(NUM_TOKENS) is not None and int(row[NUM_TOKENS]) != len(ids):
        return "length_mismatch", f"num_tokens={row[NUM_TOKENS]} but {len(ids)} input_ids"
    if any(m not in (0, 1) for m in mask):
        return "bad_loss_mask", "loss_mask values must be 0 or 1"
    if not any(mask[1:]):
        # The first token is never predicted (nothing precedes it), so it cannot carry loss.
        return "no_loss_tokens", "no token after the first has loss_mask=1"
    if len(ids) > max_seq_len:
        return "too_long", f"{len(ids)} tokens > sft.max_seq_len={max_seq_len}"
    return None


def validate_rows(
    rows: list[dict[str, Any]], max_seq_len: int
) -> tuple[list[Example], list[dict[str, Any]]]:
    """Rows → (examples sorted by key, quarantine rows); every row lands in exactly one of them."""
    examples, bad = [], []
    for row in rows:
        pid = str(row.get(R.PROBLEM_ID, ""))
        problem = _row_problem(row, max_seq_len)
        if problem is not None:
            bad.append(quarantine_row(STAGE, pid, problem[0], problem[1]))
            continue
        examples.append(
            Example(
                pid, tuple(int(t) for t in row[INPUT_IDS]), tuple(int(m) for m in row[LOSS_MASK])
            )
        )
    examples.sort(key=lambda e: e.key)  # read order from Ray Data is not deterministic; this is
    return examples, bad


def fingerprint(examples: list[Example]) -> str:
    """Short hash of the training set: a resumed run refuses shards that changed under it."""
    h = hashlib.sha256()
    for e in examples:
        h.update(e.problem_id.encode())
        h.update(b"\0")
        h.update(json.dumps(e.input_ids).encode())
        h.update(json.dumps(e.loss_mask).encode())
    return h.hexdigest()[:16]


def epoch_order(num_examples: int, seed: int, epoch: int) -> list[int]:
    """A seeded shuffle per epoch: the same (seed, epoch) always gives the same order."""
    order = list(range(num_examples))
    random.Random(f"palign-sft:{seed}:{epoch}").shuffle(order)
    return order


def pack(lengths: list[int], order: list[int], max_seq_len: int, packing: bool) -> list[list[int]]:
    """Example indices grouped into sequences of at most max_seq_len tokens, in `order`.

    Packing is first-fit over the open sequences (deterministic; an example joins the first sequence
    it fits in, so order within the epoch is kept approximately). Without packing: one per sequence.
    """
    if not packing:
        return [[i] for i in order]
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = lengths[i]
        for b, free in enumerate(room):
            if n <= free:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(max_seq_len - n)
    return bins


@dataclass(frozen=True)
class EpochPlan:
    """Sequences of one epoch cut into optimizer steps: steps[s][micro][rank] = sequences (example ids)."""

    epoch: int
    steps: tuple[tuple[tuple[tuple[tuple[int, ...], ...], ...], ...], ...]


def plan_epoch(
    lengths: list[int],
    seed: int,
    epoch: int,
    max_seq_len: int,
    packing: bool,
    world_size: int,
    micro_batch_size: int,
    grad_accum_steps: int,
) -> EpochPlan:
    """Deterministic assignment of every example of the epoch to (step, micro-step, rank).

    Every rank computes the same plan, so resuming at step s skips exactly the examples of steps < s.
    The last step may be short: ranks without sequences run an all-masked dummy (see collate).
    """
    seqs = pack(lengths, epoch_order(len(lengths), seed, epoch), max_seq_len, packing)
    per_micro = world_size * micro_batch_size
    per_step = per_micro * grad_accum_steps
    steps = []
    for start in range(0, len(seqs), per_step):
        chunk = seqs[start : start + per_step]
        micros = []
        for m in range(grad_accum_steps):
            part = chunk[m * per_micro : (m + 1) * per_micro]
            micros.append(
                tuple(
                    tuple(tuple(s) for s in part[r * micro_batch_size : (r + 1) * micro_batch_size])
                    for r in range(world_size)
                )
            )
        steps.append(tuple(micros))
    return EpochPlan(epoch, tuple(steps))


def step_loss_tokens(plan_step: tuple, examples: list[Example]) -> int:
    """Loss tokens of one optimizer step over all ranks (the per-token mean's denominator)."""
    return sum(
        sum(examples[i].loss_mask[1:].count(1) for seq in rank_seqs for i in seq)
        for micro in plan_step
        for rank_seqs in micro
    )


def collate(
    seqs: tuple[tuple[int, ...], ...], examples: list[Example], pad_id: int
) -> dict[str, Any]:
    """Sequences of example ids → right-padded lists: input_ids, labels, position_ids (+ token counts).

    Position ids restart at 0 for every packed example; transformers (>=5) turns those resets into a
    block-diagonal causal mask when attention_mask is None (tests/test_sft_data.py pins it). The first
    token of each example gets no label: it would be predicted from the previous example's tokens.
    Padding is a segment of its own (positions from 0), masked from the loss.
    """
    if not seqs:  # a rank without data in the last, short step: one fully masked token
        return {
            "input_ids": [[pad_id]],
            "labels": [[IGNORE_INDEX]],
            "position_ids": [[0]],
            "num_tokens": 0,
            "num_pad_tokens": 1,
            "num_loss_tokens": 0,
        }
    rows = []
    for seq in seqs:
        ids: list[int] = []
        labels: list[int] = []
        pos: list[int] = []
        for i in seq:
            ex = examples[i]
            ids += ex.input_ids
            labels += [IGNORE_INDEX] + [
                t if m else IGNORE_INDEX
                for t, m in zip(ex.input_ids[1:], ex.loss_mask[1:], strict=True)
            ]
            pos += range(ex.num_tokens)
        rows.append((ids, labels, pos))
    width = max(len(r[0]) for r in rows)
    out: dict[str, Any] = {
        "input_ids": [],
        "labels": [],
        "position_ids": [],
        "num_tokens": 0,
        "num_pad_tokens": 0,
        "num_loss_tokens": 0,
    }
    for ids, labels, pos in rows:
        pad = width - len(ids)
        out["input_ids"].append(ids + [pad_id] * pad)
        out["labels"].append(labels + [IGNORE_INDEX] * pad)
        out["position_ids"].append(pos + list(range(pad)))
        out["num_tokens"] += len(ids)
        out["num_pad_tokens"] += pad
        out["num_loss_tokens"] += sum(1 for t in labels if t != IGNORE_INDEX)
    return out


def padding_share(lengths: list[int], seqs: list[list[int]], micro_batch_size: int) -> float:
    """Share of pad tokens when `seqs` are batched micro_batch_size at a time, padded to the longest."""
    total = pad = 0
    for start in range(0, len(seqs), micro_batch_size):
        batch = [sum(lengths[i] for i in s) for s in seqs[start : start + micro_batch_size]]
        width = max(batch)
        total += width * len(batch)
        pad += sum(width - n for n in batch)
    return pad / total if total else 0.0


def padding_report(
    lengths: list[int], seed: int, max_seq_len: int, micro_batch_size: int
) -> dict[str, float | int]:
    """Padding share and sequence count of epoch 0 with and without packing (for metrics.json)."""
    order = epoch_order(len(lengths), seed, 0)
    packed = pack(lengths, order, max_seq_len, True)
    unpacked = pack(lengths, order, max_seq_len, False)
    return {
        "padding_share_packed": round(padding_share(lengths, packed, micro_batch_size), 4),
        "padding_share_unpacked": round(padding_share(lengths, unpacked, micro_batch_size), 4),
        "num_sequences_packed": len(packed),
        "num_sequences_unpacked": len(unpacked),
    }
