"""Reading inputs and writing stage outputs: atomic parts, quarantine with reasons, manifest last."""

from __future__ import annotations

import json
import math
import os
import tempfile
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from palign_ray import records as R

TMP_PREFIX = ".tmp-"  # readers skip these; a crash never leaves a visible partial file


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    _atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, default=str) + "\n").encode())


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False, default=_json_default) + "\n" for r in rows)
    _atomic_write_bytes(Path(path), text.encode())


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def write_parquet(path: str | Path, rows: list[dict[str, Any]], schema: Any = None) -> None:
    """Atomic Parquet write (tmp file + rename); with `schema`, exactly its columns and types."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if schema is None:
        table = pa.Table.from_pylist(rows)
    else:
        table = pa.Table.from_pylist([{c: r.get(c) for c in schema.names} for r in rows], schema=schema)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX, suffix=".parquet")
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_rows(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """By suffix: .parquet or .jsonl."""
    p = Path(path)
    if p.suffix == ".parquet":
        write_parquet(p, rows)
    elif p.suffix in (".jsonl", ".json"):
        write_jsonl(p, rows)
    else:
        raise ValueError(f"output {p}: unknown suffix (use .parquet or .jsonl)")


def quarantine_row(stage: str, problem_id: str, reason: str, detail: str = "", **extra: Any) -> dict[str, Any]:
    """A rejected row: where, which problem, a reason code and a human-readable detail."""
    return {R.STAGE: stage, R.PROBLEM_ID: str(problem_id), R.REASON: reason, R.DETAIL: detail[:2000], **extra}


def _clean_value(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def read_jsonl(path: Path, stage: str = "read") -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """JSONL rows, plus quarantine rows (with file and line) for lines that are not JSON objects."""
    rows, bad = [], []
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                bad.append(quarantine_row(stage, f"line-{lineno}", "invalid_utf8", f"{where}: {e}"))
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                bad.append(quarantine_row(stage, f"line-{lineno}", "invalid_json", f"{where}: {e}"))
                continue
            if not isinstance(obj, dict):
                bad.append(quarantine_row(stage, f"line-{lineno}", "not_an_object", f"{where}: got {type(obj).__name__}"))
                continue
            obj["_source_line"] = lineno
            rows.append({k: _clean_value(v) for k, v in obj.items()})
    return rows, bad


def read_parquet_rows(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    if path.is_dir():
        files = sorted(p for p in path.rglob("*.parquet") if not p.name.startswith(TMP_PREFIX) and "quarantine" not in p.parts)
        rows: list[dict[str, Any]] = []
        for f in files:
            rows += pq.read_table(f).to_pylist()
        return rows
    return pq.read_table(path).to_pylist()


def read_rows(path: str | Path, stage: str = "read") -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """JSONL / Parquet file / directory of Parquet parts / HF `datasets` dir → (rows, quarantine)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"input {p} does not exist")
    if p.is_file() and p.stat().st_size == 0:
        raise ValueError(f"input {p} is empty (0 bytes)")
    if p.suffix in (".jsonl", ".json"):
        return read_jsonl(p, stage)
    if p.suffix == ".parquet" or (p.is_dir() and any(p.rglob("*.parquet")) and not (p / "dataset_info.json").exists()):
        return read_parquet_rows(p), []
    if p.is_dir() and ((p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists()):
        from datasets import load_from_disk  # optional dependency, local path only

        ds = load_from_disk(str(p))
        if hasattr(ds, "keys"):  # DatasetDict: take the first split
            ds = ds[next(iter(ds.keys()))]
        return [dict(r) for r in ds], []
    raise ValueError(f"input {p}: unsupported format (JSONL, Parquet, a Parquet directory or a datasets dir)")


class StageDir:
    """`<run_dir>/<stage>/`: part-*.parquet outputs, quarantine/part-*.parquet, manifest.json last."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.quarantine_dir = self.root / "quarantine"
        self.manifest_path = self.root / "manifest.json"

    def is_done(self, config_hash: str | None = None) -> bool:
        if not self.manifest_path.is_file():
            return False
        if config_hash is None:
            return True
        return json.loads(self.manifest_path.read_text()).get("config_hash") == config_hash

    def write_part(self, rows: list[dict[str, Any]], quarantined: list[dict[str, Any]]) -> None:
        """One atomic part of outputs and its quarantine (both named by the same part id)."""
        part = f"part-{uuid.uuid4().hex[:12]}.parquet"
        if quarantined:
            write_parquet(self.quarantine_dir / part, quarantined)
        if rows:
            write_parquet(self.root / part, rows)

    def output_rows(self) -> list[dict[str, Any]]:
        return self._rows(self.root, recursive=False)

    def quarantine_rows(self) -> list[dict[str, Any]]:
        return self._rows(self.quarantine_dir, recursive=False)

    def done_ids(self) -> set[str]:
        return {r[R.PROBLEM_ID] for r in self.output_rows() + self.quarantine_rows()}

    @staticmethod
    def _rows(d: Path, recursive: bool) -> list[dict[str, Any]]:
        import pyarrow.parquet as pq

        if not d.is_dir():
            return []
        rows: list[dict[str, Any]] = []
        for f in sorted(d.glob("part-*.parquet")):
            rows += pq.read_table(f).to_pylist()
        return rows

    def write_manifest(self, **info: Any) -> None:
        """Written last: its presence means the stage's outputs are complete."""
        out, quar = self.output_rows(), self.quarantine_rows()
        reasons: dict[str, int] = {}
        for q in quar:
            reasons[q[R.REASON]] = reasons.get(q[R.REASON], 0) + 1
        write_json(self.manifest_path, {"num_output": len(out), "num_quarantined": len(quar), "reasons": reasons, **info})

    def reset(self) -> None:
        import shutil

        if self.root.exists():
            shutil.rmtree(self.root)
