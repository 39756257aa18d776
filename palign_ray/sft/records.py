"""The sft_data stage: the paper's response format (and baselines), chat-template tokenization,
response-only loss masks, shards.

Run as: palign sft-data --input aligned.parquet --output shards_dir/ [--method palign|...] [key=value ...]
    or: palign sft-data --input released.jsonl --output shards_dir/ --format alpaca|sharegpt|messages
(`palign build-sft` is the same command under its older name.)
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from array import array
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from palign_ray import records as R
from palign_ray.artifacts import TMP_PREFIX, quarantine_row, retention
from palign_ray.config import AlignConfig, Config
from palign_ray.fields import read_id
from palign_ray.teacher import teacher_prompt

log = logging.getLogger(__name__)

STAGE = "sft_data"
METHODS = ("palign", "full_cot", "fixed_ratio", "prefix_only", "continuation_only")
INPUT_IDS = "input_ids"
LOSS_MASK = "loss_mask"
NUM_TOKENS = "num_tokens"
NUM_LOSS_TOKENS = "num_loss_tokens"
META_FILE = "sft_meta.json"
MARKERS = re.compile(
    r"<Begin_of_(?:Prefix|Draft)>.*?<End_of_(?:Prefix|Draft)>", re.DOTALL
)  # paper / released model
# Fields each method's response is built from (checked per row; a missing value quarantines the row).
METHOD_FIELDS: dict[str, tuple[str, ...]] = {
    "palign": (R.QUESTION, R.PREFIX, R.CONTINUATION),
    "fixed_ratio": (R.QUESTION, R.PREFIX, R.CONTINUATION),
    "full_cot": (R.QUESTION, R.ANSWER, R.COT),
    "prefix_only": (R.QUESTION, R.ANSWER, R.PREFIX),
    "continuation_only": (R.QUESTION, R.CONTINUATION),
}


def final_answer_line(answer: str) -> str:
    return f"The final answer is \\boxed{{{answer}}}."


def build_response(row: dict[str, Any], method: str, cfg: AlignConfig) -> str:
    """The assistant turn of one SFT example.

    - palign: `{begin}{prefix}{end}\\n{continuation}` — the paper's target (teacher prefix, then the
      student's own filtered continuation); prefix right-stripped, continuation stripped.
    - fixed_ratio: the same format; the prefix is the fixed-ratio one (judge.search=fixed_ratio)
      and the continuation was generated from it.
    - full_cot: the whole teacher trace (long-CoT SFT), plus `The final answer is \\boxed{a}.` on a
      new paragraph when the trace has no boxed answer (ingested thinking trajectories).
    - prefix_only: `{begin}{prefix}{end}\\nThe final answer is \\boxed{a}.` — the teacher prefix alone,
      no continuation.
    - continuation_only: the student's filtered continuation alone, no markers, no prefix.
    """
    from palign_ray.grading import extract_boxed

    if method in ("palign", "fixed_ratio"):
        return f"{cfg.prefix_begin}{row[R.PREFIX].rstrip()}{cfg.prefix_end}\n{row[R.CONTINUATION].strip()}"
    if method == "full_cot":
        cot = row[R.COT].strip()
        return (
            cot
            if extract_boxed(cot) is not None
            else f"{cot}\n\n{final_answer_line(str(row[R.ANSWER]))}"
        )
    if method == "prefix_only":
        return f"{cfg.prefix_begin}{row[R.PREFIX].rstrip()}{cfg.prefix_end}\n{final_answer_line(str(row[R.ANSWER]))}"
    if method == "continuation_only":
        return row[R.CONTINUATION].strip()
    raise ValueError(f"method {method!r} is not one of {METHODS}")


@dataclass(frozen=True)
class Tokenized:
    input_ids: list[int]
    loss_mask: list[int]
    joint: bool  # True when the prompt's tokens were a token prefix of the jointly tokenized chat


def _end_of_turn(tokenizer: Any, closing: str) -> str:
    """The first special token the template writes after the assistant content (e.g. <|im_end|>)."""
    specials = sorted(
        set(tokenizer.all_special_tokens) | {t for t in tokenizer.get_added_vocab()},
        key=len,
        reverse=True,
    )
    hits = [(closing.find(s), -len(s), s) for s in specials if s and s in closing]
    if not hits:
        raise ValueError(
            f"the chat template writes no special end-of-turn token after the assistant content (got {closing!r})"
        )
    return min(hits)[2]


def tokenize_example(tokenizer: Any, user: str, response: str, system: str = "") -> Tokenized:
    """Chat ids of ([system,] user, assistant=response) with a mask of 1 on exactly the response + end-of-turn tokens.

    The prompt is rendered with add_generation_prompt=True (what the model sees at inference, incl.
    e.g. an empty <think></think> block); template text after the end-of-turn token is dropped.
    """
    from palign_ray.chat import render_chat

    msgs = [
        *([{"role": "system", "content": system}] if system else []),
        {"role": "user", "content": user},
    ]
    prompt_text = render_chat(tokenizer, msgs, add_generation_prompt=True)
    full_text = render_chat(
        tokenizer, [*msgs, {"role": "assistant", "content": response}], add_generation_prompt=False
    )
    if not full_text.startswith(prompt_text):
        raise ValueError(
            "chat template: the generation prompt is not a prefix of the rendered conversation"
        )
    tail = full_text[len(prompt_text) :]
    at = tail.rfind(response)
    if at < 0:
        raise ValueError(
            "chat template altered the assistant content (it is not found verbatim in the rendering)"
        )
    closing = tail[at + len(response) :]
    eot = _end_of_turn(tokenizer, closing)
    tail = tail[: at + len(response) + closing.index(eot) + len(eot)]
    prompt_ids = list(tokenizer.encode(prompt_text, add_special_tokens=False))
    joint_ids = list(tokenizer.encode(prompt_text + tail, add_special_tokens=False))
    joint = joint_ids[: len(prompt_ids)] == prompt_ids
    # Where BPE merges across the boundary, tokenize the parts apart: the prompt then matches inference.
    ids = (
        joint_ids if joint else prompt_ids + list(tokenizer.encode(tail, add_special_tokens=False))
    )
    mask = [0] * len(prompt_ids) + [1] * (len(ids) - len(prompt_ids))
    return Tokenized(ids, mask, joint)


def read_method_row(
    row: dict[str, Any], method: str
) -> tuple[dict[str, Any], tuple[str, str] | None]:
    """The fields `method` trains on, read the problems stage's way (`fields`): (row with them read,
    None), or (row, (reason, detail)): `missing_<field>`, `wrong_type` (never stringified), or what
    the gold reading says. A trace loses R1's `</think>` and the answer after it; gold ["5"] is 5."""
    from palign_ray.fields import gold_answer, read_text, read_trace

    out = dict(row)
    for field in METHOD_FIELDS[method]:
        if field == R.ANSWER:
            gold = gold_answer(row.get(field), field, prose_is_solution=False)
            if gold.answer is None:
                return out, (gold.reason, gold.detail)
            out[field] = gold.answer
        elif field == R.COT:
            picked, split = read_trace(row.get(field), field, role="cot")
            if picked.reason:
                return out, (picked.reason, picked.detail)
            out[field] = split.reasoning
        else:
            text = read_text(row.get(field), field, field)
            if text.reason:
                return out, (text.reason, text.detail)
    return out, None


class _Collector:
    """Tokenizes examples into shard rows, quarantining template errors and over-long ones; keeps the counts."""

    def __init__(self, tokenizer: Any, cfg: AlignConfig) -> None:
        self.tokenizer, self.cfg = tokenizer, cfg
        self.examples: list[dict[str, Any]] = []
        self.quarantine: list[dict[str, Any]] = []
        self.num_split = 0
        self._seen: set[bytes] = set()  # digests of (problem_id, token ids) kept: 16 bytes each

    def add(self, pid: str, user: str, response: str, system: str = "") -> None:
        try:
            tok = tokenize_example(self.tokenizer, user, response, system)
        except ValueError as e:
            self.quarantine.append(quarantine_row(STAGE, pid, "template_error", str(e)))
            return
        if len(tok.input_ids) > self.cfg.max_seq_len:
            self.quarantine.append(
                quarantine_row(
                    STAGE,
                    pid,
                    "too_long",
                    f"{len(tok.input_ids)} tokens > align.max_seq_len {self.cfg.max_seq_len}",
                )
            )
            return
        # One problem's row twice (a repeated input line, a rerun appended) would be trained on twice.
        # The same text under another id is a dataset duplicate, left to deduplication (issue 26).
        h = hashlib.blake2b(pid.encode(), digest_size=16)
        h.update(array("i", tok.input_ids).tobytes())
        digest = h.digest()
        if digest in self._seen:
            self.quarantine.append(
                quarantine_row(
                    STAGE, pid, "duplicate_example", "same problem_id and tokens as an earlier row"
                )
            )
            return
        self._seen.add(digest)
        self.num_split += not tok.joint
        self.examples.append(
            {
                R.PROBLEM_ID: pid,
                INPUT_IDS: tok.input_ids,
                LOSS_MASK: tok.loss_mask,
                NUM_TOKENS: len(tok.input_ids),
                NUM_LOSS_TOKENS: sum(tok.loss_mask),
            }
        )

    def stats(self, label: str) -> dict[str, Any]:
        ex = self.examples
        return {
            "method": label,
            "num_examples": len(ex),
            "num_split_tokenized": self.num_split,
            "num_tokens": sum(e[NUM_TOKENS] for e in ex),
            "num_loss_tokens": sum(e[NUM_LOSS_TOKENS] for e in ex),
            # the longest trained response: eval.max_tokens below it cuts answers the arm was taught
            "max_loss_tokens": max((e[NUM_LOSS_TOKENS] for e in ex), default=0),
        }


def build_examples(
    rows: list[dict[str, Any]], tokenizer: Any, method: str, cfg: AlignConfig
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Rows → tokenized examples (contract columns) + quarantine (missing_field, too_long, template_error)."""
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not one of {METHODS}")
    out = _Collector(tokenizer, cfg)
    for n, raw in enumerate(rows):
        ident = read_id(raw, R.PROBLEM_ID, n)
        row, why = read_method_row(raw, method)
        why = (ident.reason, ident.detail) if ident.reason else why
        if why is not None:
            reason, detail = why
            out.quarantine.append(
                quarantine_row(STAGE, ident.value, reason, f"method {method}: {detail}")
            )
            continue
        out.add(ident.value, teacher_prompt(row[R.QUESTION]), build_response(row, method, cfg))
    return out.examples, out.quarantine, out.stats(method)


def build_file_examples(
    rows: list[dict[str, Any]], tokenizer: Any, fmt: str, cfg: AlignConfig, join: str = ""
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Rows of an existing SFT file (alpaca/sharegpt/messages) → the same examples, the response trained on verbatim.

    P-ALIGN's markers stay ordinary text of the response; the summary counts the rows that carry them.
    """
    from palign_ray.sft_formats import Rejected, example_id, from_row

    out = _Collector(tokenizer, cfg)
    num_marked = 0
    for n, row in enumerate(rows):
        pid = example_id(row, n)
        chat = from_row(row, fmt, join)
        if isinstance(chat, Rejected):
            out.quarantine.append(quarantine_row(STAGE, pid, chat.reason, chat.detail))
            continue
        num_marked += bool(MARKERS.search(chat.response))
        out.add(pid, chat.user, chat.response, chat.system)
    return (
        out.examples,
        out.quarantine,
        {**out.stats(f"file:{fmt}"), "format": fmt, "num_with_prefix_markers": num_marked},
    )


def shard_schema() -> Any:
    """The Arrow schema of a shard part (token ids int32, mask int8)."""
    import pyarrow as pa

    return pa.schema(
        [
            (R.PROBLEM_ID, pa.string()),
            (INPUT_IDS, pa.list_(pa.int32())),
            (LOSS_MASK, pa.list_(pa.int8())),
            (NUM_TOKENS, pa.int32()),
            (NUM_LOSS_TOKENS, pa.int32()),
        ]
    )


def _shard_table(examples: list[dict[str, Any]]) -> Any:
    import pyarrow as pa

    return pa.Table.from_pylist(examples, schema=shard_schema())


def _write_table_atomic(table: Any, path: Path) -> None:
    import pyarrow.parquet as pq

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX, suffix=".parquet")
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_shards(
    out_dir: Path, examples: list[dict[str, Any]], shard_rows: int, meta: dict[str, Any]
) -> list[str]:
    """part-NNNNN.parquet and sft_meta.json (last, listing the parts) in a temporary sibling directory,
    then swapped in for `out_dir`: an interrupted write leaves the previous shard set (or none), never a
    partial one that `train` would take for whole (issue 27).
    """
    import shutil

    from palign_ray.artifacts import write_json

    check_shard_output(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f"{TMP_PREFIX}{out_dir.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    names = []
    step = max(1, shard_rows)
    for i in range(0, max(len(examples), 1), step):
        name = f"part-{i // step:05d}.parquet"
        _write_table_atomic(_shard_table(examples[i : i + step]), tmp / name)
        names.append(name)
    write_json(tmp / META_FILE, {**meta, "parts": names})
    old = out_dir.parent / f"{TMP_PREFIX}{out_dir.name}-old-{os.getpid()}"
    if out_dir.exists():
        out_dir.rename(old)
    tmp.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return names


def check_shard_output(out_dir: Path) -> None:
    """`out_dir` is new, empty or a shard set this command wrote before: never a directory of other files."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ValueError(f"--output {out_dir} is a file; SFT shards need a directory")
    foreign = [
        p.name
        for p in out_dir.iterdir()
        if not (p.name == META_FILE or re.fullmatch(r"part-\d+\.parquet", p.name))
        and not p.name.startswith(TMP_PREFIX)
    ]
    if foreign or (any(out_dir.glob("part-*.parquet")) and not (out_dir / META_FILE).is_file()):
        raise ValueError(
            f"--output {out_dir} holds files that palign sft-data did not write "
            f"({', '.join(sorted(foreign)[:5]) or 'part files without ' + META_FILE}); "
            "they would be replaced: choose a new or empty directory"
        )


def load_tokenizer(model: str) -> Any:
    from transformers import AutoTokenizer

    from palign_ray.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model(model))


def shard_meta(cfg: Config, chat_template: Any, stats: dict[str, Any]) -> dict[str, Any]:
    """sft_meta.json's fields (without `parts`): what the shards were made for, and their counts."""
    return {
        "model": cfg.sft.model,
        "chat_template": chat_template,
        "max_seq_len": cfg.align.max_seq_len,
        "num_examples": stats["num_examples"],
        "method": stats["method"],
        "prefix_begin": cfg.align.prefix_begin,
        "prefix_end": cfg.align.prefix_end,
        "num_tokens": stats["num_tokens"],
        "num_loss_tokens": stats["num_loss_tokens"],
    }


def build_shards(
    rows: list[dict[str, Any]],
    cfg: Config,
    method: str,
    out_dir: str | Path,
    quarantine_file: str | Path | None = None,
    tokenizer: Any = None,
    extra_quarantine: tuple[dict[str, Any], ...] = (),
    fmt: str = "",
    join: str = "",
) -> dict[str, Any]:
    """Rows of the method's input stage → shards in out_dir (tokenized for sft.model); returns the summary.

    With `fmt` (alpaca/sharegpt/messages) the rows are an existing SFT file instead and `method` is
    not used. Quarantine goes to `quarantine_file` (default `<out_dir>.quarantine.parquet` beside the directory).
    """
    from palign_ray.artifacts import quarantine_path, uniform_rows, write_parquet

    out = Path(out_dir)
    check_shard_output(out)  # before any work, not after the tokenizing
    tok = tokenizer if tokenizer is not None else load_tokenizer(cfg.sft.model)
    if fmt:
        examples, quar, stats = build_file_examples(rows, tok, fmt, cfg.align, join)
    else:
        examples, quar, stats = build_examples(rows, tok, method, cfg.align)
    quar = [*extra_quarantine, *quar]
    meta = shard_meta(cfg, tok.chat_template, stats)
    shards = write_shards(out, examples, cfg.align.shard_rows, meta)
    write_parquet(
        Path(quarantine_file) if quarantine_file else quarantine_path(out), uniform_rows(quar)
    )
    reasons = Counter(q[R.REASON] for q in quar)
    log.info(
        "sft shards: %d examples in %d shards at %s; %d quarantined %s",
        len(examples),
        len(shards),
        out,
        len(quar),
        dict(reasons),
    )
    # rows per problem vary (samples, duplicates): retention is over distinct problems, not rows
    problems_in = len({str(r[R.PROBLEM_ID]) for r in (*examples, *quar)})
    return retention(
        STAGE, len(rows), examples, quar, num_problems_in=problems_in, shards=shards, **stats
    )
