"""SFT data: shard reading/validation, seeded order, packing, collation, padding share, packed == unpacked loss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from palign_ray.sft import data as D

PAIRS = [
    ("What is 2 + 3?", "2 + 3 = 5. The answer is \\boxed{5}."),
    ("What is 7 * 6?", "7 * 6 = 42. The answer is \\boxed{42}."),
    ("Name a prime number above 10.", "13 is prime. \\boxed{13}"),
    ("What is 10 - 4?", "10 - 4 = 6, so \\boxed{6}."),
    ("Half of 18?", "18 / 2 = 9. \\boxed{9}"),
    ("What is 3 squared?", "3 * 3 = 9. The answer is \\boxed{9}."),
    ("Sum of 1, 2 and 3?", "1 + 2 + 3 = 6. \\boxed{6}"),
    ("What is 100 / 4?", "100 / 4 = 25. The answer is \\boxed{25}."),
]


def build_shards(out_dir: Path, tokenizer, pairs=PAIRS, num_files: int = 2, extra_rows=()) -> Path:
    """Test stand-in for the data-stages writer: chat-template tokenization, response-only loss masks."""
    from palign_ray.artifacts import write_parquet
    from palign_ray.chat import chat_ids, user_turn

    rows = []
    for n, (prompt, response) in enumerate(pairs):
        head = chat_ids(tokenizer, user_turn(prompt), add_generation_prompt=True)
        full = chat_ids(
            tokenizer,
            user_turn(prompt) + [{"role": "assistant", "content": response}],
            add_generation_prompt=False,
        )
        assert full[: len(head)] == head, "chat template must extend the prompt"
        # The response up to and including the end-of-turn token; the template's trailing newline is dropped.
        end = full.index(tokenizer.convert_tokens_to_ids("<|im_end|>"), len(head)) + 1
        ids = full[:end]
        mask = [0] * len(head) + [1] * (end - len(head))
        rows.append(
            {
                "problem_id": f"p{n}",
                "input_ids": ids,
                "loss_mask": mask,
                "num_tokens": len(ids),
                "num_loss_tokens": sum(mask),
            }
        )
    rows += list(extra_rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    for i in range(num_files):
        part = rows[i::num_files]
        if part:
            import pyarrow as pa

            schema = pa.schema(
                [
                    ("problem_id", pa.string()),
                    ("input_ids", pa.list_(pa.int32())),
                    ("loss_mask", pa.list_(pa.int8())),
                    ("num_tokens", pa.int32()),
                    ("num_loss_tokens", pa.int32()),
                ]
            )
            import pyarrow.parquet as pq

            pq.write_table(
                pa.Table.from_pylist(part, schema=schema), out_dir / f"part-{i:03d}.parquet"
            )
    write_parquet(
        out_dir / ".tmp-ignored.parquet", [{"problem_id": "tmp"}]
    )  # a partial write readers must skip
    (out_dir / D.META_FILE).write_text(
        json.dumps(
            {
                "model": "default",
                "chat_template": tokenizer.chat_template,
                "max_seq_len": 2048,
                "num_examples": len(rows),
            }
        )
    )
    return out_dir


def _ex(pid: str, n: int, first_loss: int = 2) -> D.Example:
    return D.Example(
        pid, tuple(range(10, 10 + n)), tuple([0] * first_loss + [1] * (n - first_loss))
    )


def test_validate_rows_quarantines_every_bad_row_and_sorts():
    good = {"problem_id": "b", "input_ids": [1, 2, 3], "loss_mask": [0, 1, 1], "num_tokens": 3}
    rows = [
        good,
        {"problem_id": "a", "input_ids": [4, 5, 6], "loss_mask": [0, 0, 1], "num_tokens": 3},
        {"problem_id": "mismatch", "input_ids": [1, 2], "loss_mask": [1], "num_tokens": 2},
        {"problem_id": "count", "input_ids": [1, 2], "loss_mask": [0, 1], "num_tokens": 5},
        {"problem_id": "noloss", "input_ids": [1, 2], "loss_mask": [1, 0], "num_tokens": 2},
        {"problem_id": "long", "input_ids": list(range(9)), "loss_mask": [1] * 9, "num_tokens": 9},
        {"problem_id": "badmask", "input_ids": [1, 2], "loss_mask": [0, 2], "num_tokens": 2},
        {"problem_id": "null", "input_ids": None, "loss_mask": [0], "num_tokens": 1},
    ]
    examples, bad = D.validate_rows(rows, max_seq_len=8)
    assert len(examples) + len(bad) == len(rows)
    assert [e.problem_id for e in examples] == ["a", "b"]
    assert {b["problem_id"]: b["reason"] for b in bad} == {
        "mismatch": "length_mismatch",
        "count": "length_mismatch",
        "noloss": "no_loss_tokens",
        "long": "too_long",
        "badmask": "bad_loss_mask",
        "null": "missing_column",
    }
    assert "sft.max_seq_len=8" in next(b["detail"] for b in bad if b["problem_id"] == "long")


def test_shard_files_skip_tmp_and_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        D.shard_files(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no part-"):
        D.shard_files(tmp_path)
    (tmp_path / "part-000.parquet").write_bytes(b"x")
    (tmp_path / ".tmp-part-001.parquet").write_bytes(b"x")
    assert [Path(f).name for f in D.shard_files(tmp_path)] == ["part-000.parquet"]
    (tmp_path / D.META_FILE).write_text("{oops")
    with pytest.raises(ValueError, match="sft_meta.json"):
        D.read_meta(tmp_path)


def test_epoch_order_is_seeded_and_differs_per_epoch():
    assert D.epoch_order(50, 1, 0) == D.epoch_order(50, 1, 0)
    assert D.epoch_order(50, 1, 0) != D.epoch_order(50, 1, 1)
    assert D.epoch_order(50, 1, 0) != D.epoch_order(50, 2, 0)
    assert sorted(D.epoch_order(50, 1, 3)) == list(range(50))


def test_pack_first_fit_respects_max_len_and_keeps_every_example():
    lengths = [5, 3, 8, 2, 6, 1, 4]
    order = list(range(len(lengths)))
    bins = D.pack(lengths, order, max_seq_len=8, packing=True)
    assert sorted(i for b in bins for i in b) == order
    assert all(sum(lengths[i] for i in b) <= 8 for b in bins)
    assert bins == [[0, 1], [2], [3, 4], [5, 6]]
    assert D.pack(lengths, order, 8, packing=False) == [[i] for i in order]


@pytest.mark.parametrize("world,mbs,gas", [(1, 1, 1), (2, 2, 1), (2, 1, 3), (3, 2, 2)])
def test_plan_assigns_each_example_exactly_once(world, mbs, gas):
    lengths = [3, 9, 4, 7, 2, 8, 5, 6, 1, 9, 3]
    plan = D.plan_epoch(
        lengths,
        seed=0,
        epoch=1,
        max_seq_len=10,
        packing=True,
        world_size=world,
        micro_batch_size=mbs,
        grad_accum_steps=gas,
    )
    seen = [
        i for step in plan.steps for micro in step for rank in micro for seq in rank for i in seq
    ]
    assert sorted(seen) == list(range(len(lengths)))
    for step in plan.steps:
        assert len(step) == gas and all(len(micro) == world for micro in step)
        assert all(len(rank) <= mbs for micro in step for rank in micro)
    # Resuming at step s means skipping steps[:s]: those are exactly the examples already seen.
    assert plan == D.plan_epoch(lengths, 0, 1, 10, True, world, mbs, gas)


def test_collate_resets_positions_masks_example_starts_and_pads():
    exs = [_ex("a", 4), _ex("b", 3, first_loss=1), _ex("c", 2)]
    b = D.collate(((0, 1), (2,)), exs, pad_id=0)
    assert b["position_ids"] == [[0, 1, 2, 3, 0, 1, 2], [0, 1, 0, 1, 2, 3, 4]]
    assert b["input_ids"][1] == [10, 11, 0, 0, 0, 0, 0]
    ign = D.IGNORE_INDEX
    assert b["labels"][0] == [ign, ign, 12, 13, ign, 11, 12]  # b's first token is never a label
    assert b["labels"][1] == [ign, ign] + [ign] * 5
    assert (b["num_tokens"], b["num_pad_tokens"], b["num_loss_tokens"]) == (9, 5, 4)
    assert D.step_loss_tokens(((((0, 1), (2,)),),), exs) == 4  # one micro-step, one rank
    dummy = D.collate((), exs, pad_id=0)
    assert dummy["num_loss_tokens"] == 0 and dummy["labels"] == [[ign]]


def test_padding_share_packing_beats_unpacked():
    lengths = [10, 2, 9, 3, 8, 1, 7, 4]
    rep = D.padding_report(lengths, seed=0, max_seq_len=12, micro_batch_size=2)
    assert rep["num_sequences_unpacked"] == 8 and rep["num_sequences_packed"] < 8
    assert rep["padding_share_packed"] < rep["padding_share_unpacked"]
    assert D.padding_share([4, 4], [[0], [1]], 2) == 0.0
    assert D.padding_share([4, 2], [[0], [1]], 2) == pytest.approx(2 / 8)


def test_fingerprint_changes_with_data():
    a = [_ex("a", 4), _ex("b", 3)]
    assert D.fingerprint(a) == D.fingerprint(list(a))
    assert D.fingerprint(a) != D.fingerprint([_ex("a", 4), _ex("b", 4)])


def test_packed_loss_equals_unpacked_loss(tiny_model, tokenizer, tmp_path):
    """Position-id resets isolate packed examples in transformers' sdpa/eager attention (fp32, CPU)."""
    import pyarrow.parquet as pq
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    shards = build_shards(tmp_path / "shards", tokenizer, num_files=1)
    rows = pq.read_table(shards / "part-000.parquet").to_pylist()
    examples, bad = D.validate_rows(rows, max_seq_len=512)
    assert not bad and len(examples) == len(PAIRS)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    for layer in (
        model.model.layers
    ):  # random tiny weights are near-uniform; sharpen attention so leaks show
        layer.self_attn.q_proj.weight.data.mul_(8.0)

    def token_losses(seqs, impl):
        model.config._attn_implementation = impl
        b = D.collate(seqs, examples, pad_id=tokenizer.pad_token_id)
        with torch.no_grad():
            logits = model(
                input_ids=torch.tensor(b["input_ids"]),
                position_ids=torch.tensor(b["position_ids"]),
                use_cache=False,
            ).logits
        labels = torch.tensor(b["labels"])[:, 1:]
        losses = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]),
            labels.reshape(-1),
            ignore_index=D.IGNORE_INDEX,
            reduction="none",
        )
        return losses[labels.reshape(-1) != D.IGNORE_INDEX]

    for impl in ("sdpa", "eager"):
        unpacked = torch.cat([token_losses(((i,),), impl) for i in range(len(examples))])
        packed = token_losses(
            ((0, 1, 2), (3, 4), (5, 6, 7)), impl
        )  # 3 sequences, right-padded to one width
        assert packed.shape == unpacked.shape
        assert torch.allclose(packed, unpacked, atol=1e-5), (impl, (packed - unpacked).abs().max())
        # Same positions but a plain 2D mask (which switches off packed-sequence detection): attention
        # then crosses examples and the logits differ, so the check above can fail.
        b = D.collate(((0, 1, 2),), examples, pad_id=tokenizer.pad_token_id)
        ids, pos = torch.tensor(b["input_ids"]), torch.tensor(b["position_ids"])
        with torch.no_grad():
            leaky = model(
                input_ids=ids,
                position_ids=pos,
                attention_mask=torch.ones_like(ids),
                use_cache=False,
            ).logits
            fair = model(input_ids=ids, position_ids=pos, use_cache=False).logits
        n0 = examples[0].num_tokens
        assert torch.allclose(
            leaky[0, :n0], fair[0, :n0], atol=1e-5
        )  # first example: causal anyway
        assert not torch.allclose(leaky[0, n0:], fair[0, n0:], atol=1e-3)


def test_total_steps_repeats_the_set_until_reached():
    """sft.total_steps: arms with fewer examples pass over them more often, same steps and batch size."""
    from palign_ray.config import SFTConfig
    from palign_ray.sft.train import _epoch_plans, _schedule, _step_cap

    def plan(ep: int) -> D.EpochPlan:  # 6 examples, 1 per sequence, 2 ranks x 1: 3 steps an epoch
        return D.plan_epoch([5] * 6, 0, ep, 10, False, 2, 1, 1)

    assert len(_epoch_plans(plan, 2, 0)) == 2  # epochs decide
    plans = _epoch_plans(plan, 1, 7)  # 7 steps need a third pass, reshuffled
    assert [p.epoch for p in plans] == [0, 1, 2]
    cfg = SFTConfig(total_steps=7, max_steps=0)
    sched = _schedule(plans, _step_cap(cfg))
    assert len(sched) == 7 and sched[-1] == (2, 0)
    assert _step_cap(SFTConfig(total_steps=7, max_steps=5)) == 5  # max_steps still caps a run
    assert _step_cap(SFTConfig()) == 0
