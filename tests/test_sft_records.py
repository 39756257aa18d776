"""SFT records: response formats, response-only masks through real chat templates, shards per the contract."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from palign_ray.config import AlignConfig, Config
from palign_ray.sft.records import build_examples, build_response, build_shards, tokenize_example
from palign_ray.teacher import teacher_prompt

# A Qwen3-like template written here (no download): ChatML turns, and an empty think block before
# the answer of the last assistant turn and after the generation prompt (thinking disabled).
QWEN_STYLE = (
    "{%- for m in messages %}"
    "{%- if m.role == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + m.content + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)

ROW = {
    "problem_id": "p",
    "question": "What is 3+4?",
    "answer": "7",
    "prefix": "We add 3 and 4. ",
    "continuation": "\n3 + 4 = 7, so the answer is \\boxed{7}.\n",
    "cot": "We add 3 and 4. That gives 7. Done.",
}


@pytest.fixture(scope="module")
def qwen_tokenizer(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = QWEN_STYLE
    return tok


def test_responses_per_method() -> None:
    cfg = AlignConfig()
    assert (
        build_response(ROW, "palign", cfg)
        == "<Begin_of_Prefix>We add 3 and 4.<End_of_Prefix>\n3 + 4 = 7, so the answer is \\boxed{7}."
    )
    assert build_response(ROW, "fixed_ratio", cfg) == build_response(ROW, "palign", cfg)
    assert (
        build_response(ROW, "full_cot", cfg)
        == "We add 3 and 4. That gives 7. Done.\n\nThe final answer is \\boxed{7}."
    )
    assert build_response({**ROW, "cot": "so \\boxed{7}"}, "full_cot", cfg) == "so \\boxed{7}"
    assert (
        build_response(ROW, "prefix_only", cfg)
        == "<Begin_of_Prefix>We add 3 and 4.<End_of_Prefix>\nThe final answer is \\boxed{7}."
    )
    assert (
        build_response(ROW, "continuation_only", cfg) == "3 + 4 = 7, so the answer is \\boxed{7}."
    )
    draft = AlignConfig(prefix_begin="<Begin_of_Draft>", prefix_end="<End_of_Draft>")
    assert build_response(ROW, "palign", draft).startswith(
        "<Begin_of_Draft>We add 3 and 4.<End_of_Draft>\n"
    )
    with pytest.raises(ValueError, match="method"):
        build_response(ROW, "nope", cfg)


def _check_mask(tok, response: str, think_block: bool) -> bool:
    ex = tokenize_example(tok, teacher_prompt(ROW["question"]), response)
    assert len(ex.input_ids) == len(ex.loss_mask)
    first = ex.loss_mask.index(1)
    assert set(ex.loss_mask[:first]) == {0} and set(ex.loss_mask[first:]) == {
        1
    }  # one contiguous response span
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert ex.input_ids[-1] == im_end  # the end-of-turn token is trained on, nothing after it
    trained = tok.decode(ex.input_ids[first:], skip_special_tokens=False)
    assert trained == response + "<|im_end|>"
    prompt = tok.decode(ex.input_ids[:first], skip_special_tokens=False)
    assert prompt.endswith(
        "<|im_start|>assistant\n" + ("<think>\n\n</think>\n\n" if think_block else "")
    )
    assert teacher_prompt(ROW["question"]) in prompt
    return ex.joint


@pytest.mark.parametrize("method", ["palign", "full_cot", "prefix_only", "continuation_only"])
def test_mask_round_trip_smollm2_chatml(tokenizer, method: str) -> None:
    assert _check_mask(
        tokenizer, build_response(ROW, method, AlignConfig()), think_block=False
    )  # token prefix held


@pytest.mark.parametrize("method", ["palign", "full_cot"])
def test_mask_round_trip_qwen_style_thinking(qwen_tokenizer, method: str) -> None:
    # "</think>\n\n" + text tokenizes differently from "</think>\n\n" alone (BPE merges across the
    # boundary), so the prompt is not a token prefix and the parts are tokenized apart.
    assert not _check_mask(
        qwen_tokenizer, build_response(ROW, method, AlignConfig()), think_block=True
    )


def test_template_without_end_of_turn_is_an_error(tokenizer) -> None:
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
    with pytest.raises(ValueError, match="end-of-turn"):
        tokenize_example(tok, "hi", "there")


def test_build_examples_quarantine(tokenizer) -> None:
    rows = [
        ROW,
        {**ROW, "problem_id": "q", "continuation": ""},
        {**ROW, "problem_id": "long", "continuation": "word " * 400},
    ]
    ex, quar, stats = build_examples(rows, tokenizer, "palign", AlignConfig(max_seq_len=200))
    assert [e["problem_id"] for e in ex] == ["p"]
    assert [(q["problem_id"], q["reason"]) for q in quar] == [
        ("q", "missing_continuation"),
        ("long", "too_long"),
    ]
    assert len(ex) + len(quar) == len(rows)
    assert stats["num_loss_tokens"] == ex[0]["num_loss_tokens"] == sum(ex[0]["loss_mask"])
    assert stats["max_loss_tokens"] == max(e["num_loss_tokens"] for e in ex)


def test_duplicates_are_trained_on_once_and_retention_counts_problems(
    tokenizer, tmp_path: Path
) -> None:
    """Issue 27: a repeated row became a second SFT example without a word, and two rows of one problem
    (both kept) reported retention 0.5."""
    rows = [
        ROW,
        dict(ROW),  # the same row again
        {**ROW, "continuation": ROW["continuation"] + " Checked."},  # a second sample of "p"
        {**ROW, "problem_id": "r", "continuation": ""},
    ]
    summary = build_shards(rows, Config(), "palign", tmp_path / "s", tokenizer=tokenizer)
    quar = pq.read_table(tmp_path / "s.quarantine.parquet").to_pylist()
    assert [(q["problem_id"], q["reason"]) for q in quar] == [
        ("p", "duplicate_example"),
        ("r", "missing_continuation"),
    ]
    assert summary["num_examples"] == 2 and summary["num_quarantined"] == 2  # 4 rows in
    assert summary["num_problems_in"] == 2 and summary["num_problems_out"] == 1
    assert summary["retention"] == 0.5  # problems kept ÷ problems in: "r" was lost, "p" was not


def test_shards_contract(tokenizer, tmp_path: Path) -> None:
    rows = [{**ROW, "problem_id": f"p{i}"} for i in range(5)] + [
        {**ROW, "problem_id": "bad", "prefix": None}
    ]
    out = tmp_path / "shards"
    (out).mkdir()
    # an earlier run's shard set (its meta lists it) is replaced; parts without one are refused (below)
    (out / "part-99999.parquet").write_text("stale")
    (out / "sft_meta.json").write_text('{"parts": ["part-99999.parquet"]}')
    cfg = Config()
    cfg = type(cfg)(align=AlignConfig(shard_rows=2))
    summary = build_shards(rows, cfg, "palign", out, tokenizer=tokenizer)
    parts = sorted(p.name for p in out.glob("part-*.parquet"))
    assert parts == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    table = pa.concat_tables([pq.read_table(out / p) for p in parts])
    assert table.schema.field("input_ids").type == pa.list_(pa.int32())
    assert table.schema.field("loss_mask").type == pa.list_(pa.int8())
    assert (
        table.schema.field("num_tokens").type == pa.int32()
        and table.schema.field("num_loss_tokens").type == pa.int32()
    )
    assert table.schema.field("problem_id").type == pa.string()
    rows_out = table.to_pylist()
    assert [r["problem_id"] for r in rows_out] == [f"p{i}" for i in range(5)]
    assert all(
        r["num_tokens"] == len(r["input_ids"]) and r["num_loss_tokens"] == sum(r["loss_mask"])
        for r in rows_out
    )
    meta = json.loads((out / "sft_meta.json").read_text())
    assert (
        meta["num_examples"] == 5
        and meta["model"] == "default"
        and meta["max_seq_len"] == cfg.align.max_seq_len
        and meta["chat_template"]
    )
    quar = pq.read_table(tmp_path / "shards.quarantine.parquet").to_pylist()
    assert [(q["problem_id"], q["reason"]) for q in quar] == [("bad", "missing_prefix")]
    assert summary["num_examples"] == 5 and summary["num_quarantined"] == 1


def test_build_sft_cli(tmp_path: Path, capsys) -> None:
    from palign_ray.cli import main

    src = tmp_path / "traces.jsonl"
    src.write_text(json.dumps(ROW) + "\n" + "not json\n")
    rc = main(
        [
            "build-sft",
            "--input",
            str(src),
            "--output",
            str(tmp_path / "sft"),
            "--method",
            "full_cot",
        ]
    )
    summary = json.loads(capsys.readouterr().out)
    assert rc == 0 and summary["num_examples"] == 1 and summary["method"] == "full_cot"
    quar = pq.read_table(tmp_path / "sft.quarantine.parquet").to_pylist()
    assert [q["reason"] for q in quar] == ["invalid_json"]


# ------------------------------------------------------------------ existing SFT files (issue 18)


def _supervised(tok, ex: dict) -> tuple[str, str]:
    """(decoded prompt, decoded supervised part) of a shard row; the mask must be one contiguous response span."""
    mask = ex["loss_mask"]
    first = mask.index(1)
    assert set(mask[:first]) == {0} and set(mask[first:]) == {1}
    return tok.decode(ex["input_ids"][:first]), tok.decode(ex["input_ids"][first:])


def test_released_palign_file_round_trips(
    tokenizer, shared_data: str, tmp_path: Path, capsys
) -> None:
    """The 16 released P-ALIGN rows (alpaca) → shards: supervised tokens decode to each `output` + end of turn,
    markers kept as text, prompt masked and identical to the pipeline's (paper) prompt for the question."""
    from palign_ray.cli import main

    src = Path(shared_data) / "external" / "palign_sample.jsonl"
    released = [json.loads(line) for line in src.read_text().splitlines()]
    # 693-1,454 tokens with SmolLM2's template: half exceed the default align.max_seq_len (1024) and would be too_long.
    rc = main(
        [
            "build-sft",
            "--input",
            str(src),
            "--output",
            str(tmp_path / "sft"),
            "--format",
            "alpaca",
            "align.max_seq_len=2048",
        ]
    )
    summary = json.loads(capsys.readouterr().out)
    assert rc == 0 and summary["num_examples"] == 16 and summary["num_quarantined"] == 0
    assert summary["num_with_prefix_markers"] == 16 and summary["method"] == "file:alpaca"
    rows = pq.read_table(tmp_path / "sft" / "part-00000.parquet").to_pylist()
    assert [r["problem_id"] for r in rows] == [f"line-{i}" for i in range(1, 17)]
    for row, given in zip(rows, released, strict=True):
        prompt, trained = _supervised(tokenizer, row)
        assert trained == given["output"] + "<|im_end|>"
        assert trained.startswith("<Begin_of_Prefix>") and "<End_of_Prefix>\n" in trained
        assert prompt.endswith(
            teacher_prompt(given["input"]) + "<|im_end|>\n<|im_start|>assistant\n"
        )
        # Same ids as the pipeline's build-sft writes for (question, response): one tokenization path.
        assert (
            row["input_ids"]
            == tokenize_example(
                tokenizer, teacher_prompt(given["input"]), given["output"]
            ).input_ids
        )
        # ... and the response has exactly the pipeline's palign shape (prefix right-stripped, continuation stripped).
        prefix, continuation = (
            given["output"].removeprefix("<Begin_of_Prefix>").split("<End_of_Prefix>\n", 1)
        )
        assert (
            build_response(
                {"prefix": prefix, "continuation": continuation}, "palign", AlignConfig()
            )
            == given["output"]
        )
    meta = json.loads((tmp_path / "sft" / "sft_meta.json").read_text())
    assert meta["num_examples"] == 16 and meta["method"] == "file:alpaca"


def test_chat_formats_and_their_quarantine(tokenizer, tmp_path: Path) -> None:
    from palign_ray.sft.records import build_file_examples

    convo = [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "What is 3+4?"},
        {"from": "gpt", "value": "7"},
    ]
    sharegpt = [
        {"id": "ok", "conversations": convo},
        {"id": "two-turns", "conversations": convo + convo[1:]},
        {
            "id": "roles",
            "conversations": [{"from": "gpt", "value": "7"}, {"from": "human", "value": "Q"}],
        },
        {"id": "none"},
    ]
    ex, quar, stats = build_file_examples(sharegpt, tokenizer, "sharegpt", AlignConfig())
    prompt, trained = _supervised(tokenizer, ex[0])
    assert (
        trained == "7<|im_end|>" and "<|im_start|>system\nBe brief.<|im_end|>" in prompt
    )  # the file's system turn
    assert [(q["problem_id"], q["reason"]) for q in quar] == [
        ("two-turns", "not_single_turn"),
        ("roles", "bad_roles"),
        ("none", "missing_field"),
    ]
    assert stats["num_examples"] == 1 and stats["num_with_prefix_markers"] == 0
    messages = [
        {
            "messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}],
            "_source_line": 3,
        },
        {"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": ""}]},
    ]
    ex, quar, _ = build_file_examples(messages, tokenizer, "messages", AlignConfig())
    assert _supervised(tokenizer, ex[0])[1] == "A.<|im_end|>" and ex[0]["problem_id"] == "line-3"
    assert [(q["problem_id"], q["reason"]) for q in quar] == [("row-1", "missing_field")]
    alpaca = [
        {"instruction": "Solve.", "input": "1+1?", "output": "2"},
        {"instruction": "Solve.", "output": " "},
        {"instruction": "Solve.", "input": "x", "output": "y", "history": [["a", "b"]]},
    ]
    ex, quar, _ = build_file_examples(alpaca, tokenizer, "alpaca", AlignConfig(), join="\n")
    assert "<|im_start|>user\nSolve.\n1+1?<|im_end|>" in _supervised(tokenizer, ex[0])[0]
    assert [q["reason"] for q in quar] == ["missing_field", "not_single_turn"]


def test_build_sft_format_and_method_are_exclusive(tmp_path: Path) -> None:
    from palign_ray.cli import main

    src = tmp_path / "a.jsonl"
    src.write_text(json.dumps({"instruction": "i", "output": "o"}) + "\n")
    with pytest.raises(SystemExit):
        main(
            [
                "build-sft",
                "--input",
                str(src),
                "--output",
                str(tmp_path / "o"),
                "--format",
                "alpaca",
                "--method",
                "palign",
            ]
        )


def test_shards_are_swapped_in_whole_and_foreign_outputs_refused(tokenizer, tmp_path: Path) -> None:
    """Issue 27: sft-data deleted part files it had not written; an interrupted write left a partial set."""
    from palign_ray.sft import data as D
    from palign_ray.sft.records import META_FILE, write_shards

    out = tmp_path / "shards"
    rows = [
        {
            "problem_id": f"p{i}",
            "input_ids": [1, 2, 3],
            "loss_mask": [0, 1, 1],
            "num_tokens": 3,
            "num_loss_tokens": 2,
        }
        for i in range(5)
    ]
    assert write_shards(out, rows, 2, {"num_examples": 5}) == [
        f"part-0000{i}.parquet" for i in range(3)
    ]
    assert json.loads((out / META_FILE).read_text())["parts"] == sorted(
        p.name for p in out.glob("part-*")
    )
    assert write_shards(out, rows[:1], 2, {"num_examples": 1}) == [
        "part-00000.parquet"
    ]  # replaced whole
    assert [p.name for p in out.iterdir() if p.name.startswith("part-")] == ["part-00000.parquet"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
    (out / "part-00009.parquet").write_bytes(
        (out / "part-00000.parquet").read_bytes()
    )  # a stray part
    with pytest.raises(ValueError, match="rerun palign sft-data"):
        D.shard_files(out)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="did not write"):
        write_shards(mine, rows, 2, {})
    assert (mine / "notes.txt").read_text() == "keep me"
