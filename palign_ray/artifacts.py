"""Reading inputs and writing stage outputs: atomic parts, quarantine with reasons, manifest last."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from palign_ray import records as R

TMP_PREFIX = ".tmp-"  # readers skip these; a crash never leaves a visible partial file
# Files no commit marker names are deleted only when older than this. On a shared filesystem a rerun's
# listing of commits/ can be stale (NFS caches directory attributes for up to acdirmax, 60 s by
# default), so a fresh unnamed file may belong to a commit the driver cannot see yet; readers ignore
# unnamed files, so keeping them a while costs only disk.
UNCOMMITTED_GRACE_S = 600.0


def _fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (a marker must not outlive the file it names after power loss)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory; the file itself is synced
        pass
    finally:
        os.close(fd)


def _fsync_file(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic_write_chunks(path, [data])


def _atomic_write_chunks(path: Path, chunks: Iterable[bytes]) -> None:
    """Write chunks to a hidden temporary file, then rename it into place (never a visible partial file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX)
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are meant to be shared
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    _atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, default=str) + "\n").encode())


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """One JSON object per line, atomically; rows are consumed one at a time (a generator stays lazy)."""
    _atomic_write_chunks(
        Path(path),
        ((json.dumps(r, ensure_ascii=False, default=_json_default) + "\n").encode() for r in rows),
    )


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
        table = pa.Table.from_pylist(
            [{c: r.get(c) for c in schema.names} for r in rows], schema=schema
        )
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX, suffix=".parquet")
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        _fsync_file(tmp)  # on disk before its name (and then its commit marker) can be seen
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are meant to be shared
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def parquet_writer(path: str | Path, schema: Any) -> Iterator[Any]:
    """A `pq.ParquetWriter` with a fixed schema, written in batches and made visible only on success."""
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX, suffix=".parquet")
    os.close(fd)
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            yield writer
        _fsync_file(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are meant to be shared
        os.replace(tmp, path)
        _fsync_dir(path.parent)
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


def quarantine_row(
    stage: str, problem_id: str, reason: str, detail: str = "", **extra: Any
) -> dict[str, Any]:
    """A rejected row: where, which problem, a reason code and a human-readable detail."""
    return {
        R.STAGE: stage,
        R.PROBLEM_ID: str(problem_id),
        R.REASON: reason,
        R.DETAIL: detail[:2000],
        **extra,
    }


def _clean_value(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def read_jsonl(
    path: Path, stage: str = "read"
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
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
            except RecursionError:  # nested deeper than the decoder's stack: a row, not a crash
                bad.append(
                    quarantine_row(
                        stage,
                        f"line-{lineno}",
                        "invalid_json",
                        f"{where}: nested too deeply to read",
                    )
                )
                continue
            if not isinstance(obj, dict):
                bad.append(
                    quarantine_row(
                        stage,
                        f"line-{lineno}",
                        "not_an_object",
                        f"{where}: got {type(obj).__name__}",
                    )
                )
                continue
            obj["_source_line"] = lineno
            rows.append({k: _clean_value(v) for k, v in obj.items()})
    return rows, bad


def read_parquet_rows(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    if path.is_dir() and (path / COMMITS).is_dir():  # a stage directory: its committed parts only
        return StageDir(path).output_rows()
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*.parquet")
            if not p.name.startswith(TMP_PREFIX)
            and "quarantine" not in p.parts
            # a command's side files beside its output (issue 27: they were read as data rows)
            and not p.name.endswith(".quarantine.parquet")
        )
        rows: list[dict[str, Any]] = []
        for f in files:
            rows += pq.read_table(f).to_pylist()
        return rows
    return pq.read_table(path).to_pylist()


def read_rows(
    path: str | Path, stage: str = "read"
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """JSONL / Parquet file / directory of Parquet parts / HF `datasets` dir → (rows, quarantine)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"input {p} does not exist")
    if p.is_file() and p.stat().st_size == 0:
        raise ValueError(f"input {p} is empty (0 bytes)")
    if p.suffix in (".jsonl", ".json"):
        return read_jsonl(p, stage)
    if p.suffix == ".parquet" or (
        p.is_dir() and any(p.rglob("*.parquet")) and not (p / "dataset_info.json").exists()
    ):
        return read_parquet_rows(p), []
    if p.is_dir() and ((p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists()):
        from datasets import load_from_disk  # optional dependency, local path only

        ds = load_from_disk(str(p))
        if hasattr(ds, "keys"):  # DatasetDict: take the first split
            ds = ds[next(iter(ds.keys()))]
        return [dict(r) for r in ds], []
    raise ValueError(
        f"input {p}: unsupported format (JSONL, Parquet, a Parquet directory or a datasets dir)"
    )


COMMITS = "commits"  # one JSON marker per part, written after its files: only committed parts exist


class StageDir:
    """`<run_dir>/<stage>/`: part-*.parquet outputs, quarantine/part-*.parquet, commits/, manifest.json last.

    A part is its output file, its quarantine file (either may be absent) and its commit marker
    `commits/<part>.json`, written last and atomically. Readers see committed parts only, so a crash
    between a part's two files (or before its marker) leaves nothing visible and the rerun redoes
    exactly those problems. Workers of a streaming stage write parts; the driver writes the manifest.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.quarantine_dir = self.root / "quarantine"
        self.commits_dir = self.root / COMMITS
        self.manifest_path = self.root / "manifest.json"

    def is_done(self, config_hash: str | None = None) -> bool:
        if not self.manifest_path.is_file():
            return False
        if config_hash is None:
            return True
        return self.manifest().get("config_hash") == config_hash

    def manifest(self) -> dict[str, Any]:
        return json.loads(self.manifest_path.read_text())

    def write_part(
        self,
        rows: list[dict[str, Any]],
        quarantined: list[dict[str, Any]],
        *,
        summary: dict[str, Any] | None = None,
        num_input: int | None = None,
        schema: Any = None,
    ) -> str:
        """One part of outputs and its quarantine, visible all at once (the commit marker is written last)."""
        part = f"part-{uuid.uuid4().hex[:12]}"
        files = []
        if quarantined:
            # reasons carry different extra columns (align's rejected continuations have their text)
            write_parquet(self.quarantine_dir / f"{part}.parquet", uniform_rows(quarantined))
            files.append(f"{self.quarantine_dir.name}/{part}.parquet")
        if rows:
            write_parquet(self.root / f"{part}.parquet", rows, schema)
            files.append(f"{part}.parquet")
        reasons = Counter(str(q[R.REASON]) for q in quarantined)
        ids = sorted({str(r[R.PROBLEM_ID]) for r in (*rows, *quarantined)})
        write_json(
            self.commits_dir / f"{part}.json",
            {
                "part": part,
                "files": files,
                "num_input": len(rows) + len(quarantined) if num_input is None else num_input,
                "num_output": len(rows),
                "num_quarantined": len(quarantined),
                "reasons": dict(reasons),
                "committed_at": time.time(),
                "problem_ids": ids,
                "summary": summary or {},
            },
        )
        return part

    def commits(self) -> list[dict[str, Any]]:
        """Committed parts, oldest name first (a stage dir written before commit markers: every part file)."""
        if not self.commits_dir.is_dir():
            return self._legacy_commits() if self.manifest_path.is_file() else []
        return [json.loads(p.read_text()) for p in sorted(self.commits_dir.glob("part-*.json"))]

    def _legacy_commits(self) -> list[dict[str, Any]]:
        files = (
            [
                p.relative_to(self.root).as_posix()
                for d in (self.root, self.quarantine_dir)
                for p in sorted(d.glob("part-*.parquet"))
            ]
            if self.root.is_dir()
            else []
        )
        return [{"part": "legacy", "files": files}]

    def output_files(self) -> list[Path]:
        return [self.root / f for c in self.commits() for f in c["files"] if "/" not in f]

    def quarantine_files(self) -> list[Path]:
        return [
            self.root / f
            for c in self.commits()
            for f in c["files"]
            if f.startswith(self.quarantine_dir.name + "/")
        ]

    def output_rows(self) -> list[dict[str, Any]]:
        return _read_files(self.output_files())

    def quarantine_rows(self) -> list[dict[str, Any]]:
        return _read_files(self.quarantine_files())

    def done_ids(self) -> set[str]:
        """problem_ids with a committed output or quarantine row (from the commit markers)."""
        ids: set[str] = set()
        for c in self.commits():
            ids.update(
                c["problem_ids"]
                if "problem_ids" in c
                else _ids_in(self.root / f for f in c["files"])
            )
        return ids

    def drop_duplicate_parts(self) -> list[str]:
        """Uncommit parts whose problems an earlier part already holds; returns their names.

        A task retried after its actor or node died may commit the same problems twice (the first
        attempt committed, its reply was lost). Results are seeded per problem, so the earlier commit is
        kept; the later part's other problems, if any, are simply done again by the stage's next pass.
        """
        seen: set[str] = set()
        dropped = []
        for c in sorted(self.commits(), key=lambda c: (c.get("committed_at", 0.0), c["part"])):
            ids = set(c.get("problem_ids", []))
            if ids & seen:
                (self.commits_dir / f"{c['part']}.json").unlink(missing_ok=True)
                for f in c["files"]:
                    (self.root / f).unlink(missing_ok=True)
                dropped.append(c["part"])
            else:
                seen |= ids
        return dropped

    def remove_uncommitted(self, grace_s: float = UNCOMMITTED_GRACE_S) -> int:
        """Delete part files no marker names (a crash before the commit) once they are older than
        `grace_s` (see UNCOMMITTED_GRACE_S); returns how many."""
        if not self.root.is_dir() or not self.commits_dir.is_dir() and self.manifest_path.is_file():
            return 0
        keep = {self.root / f for c in self.commits() for f in c["files"]}
        stale = [
            p
            for d in (self.root, self.quarantine_dir)
            if d.is_dir()
            for p in d.glob("part-*.parquet")
            if p not in keep
        ]
        stale += [
            p
            for d in (self.root, self.quarantine_dir, self.commits_dir)
            if d.is_dir()
            for p in d.glob(TMP_PREFIX + "*")
        ]
        cutoff = time.time() - grace_s
        stale = [p for p in stale if _mtime(p) < cutoff]
        for p in stale:
            p.unlink(missing_ok=True)
        return len(stale)

    def write_manifest(self, **info: Any) -> None:
        """Written last: its presence means the stage's outputs are complete (counts from the commit markers)."""
        commits = self.commits()
        reasons: Counter[str] = Counter()
        for c in commits:
            reasons.update(c.get("reasons", {}))
        write_json(
            self.manifest_path,
            {
                "num_output": sum(c.get("num_output", 0) for c in commits),
                "num_quarantined": sum(c.get("num_quarantined", 0) for c in commits),
                "reasons": dict(reasons),
                "num_parts": len(commits),
                **info,
            },
        )

    def reset(self) -> None:
        import shutil

        if self.root.exists():
            shutil.rmtree(self.root)


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except FileNotFoundError:  # removed meanwhile: nothing to delete
        return float("inf")


def _ids_in(files: Iterable[Path]) -> set[str]:
    import pyarrow.parquet as pq

    return {
        str(x)
        for f in files
        for x in pq.read_table(f, columns=[R.PROBLEM_ID]).column(0).to_pylist()
    }


def _read_files(files: list[Path]) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    for f in files:
        rows += pq.read_table(f).to_pylist()
    return rows


# --------------------------------------------------------------------------- stage accounting


def retention(
    stage: str,
    num_in: int,
    out: list[dict[str, Any]],
    quarantined: list[dict[str, Any]],
    num_problems_in: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Per-stage retention: rows in, out, quarantined by reason, distinct problems kept (+ stage extras).

    `retention` is problems kept ÷ `num_problems_in` where a stage's rows per problem vary (given),
    else ÷ rows in (one row per problem).
    """
    reasons = dict(Counter(str(q[R.REASON]) for q in quarantined))
    kept = len({str(r[R.PROBLEM_ID]) for r in out})
    denom = num_in if num_problems_in is None else num_problems_in
    return {
        "stage": stage,
        "num_in": num_in,
        "num_out": len(out),
        **({} if num_problems_in is None else {"num_problems_in": num_problems_in}),
        "num_problems_out": kept,
        "num_quarantined": len(quarantined),
        "reasons": reasons,
        "retention": round(kept / denom, 4) if denom else 0.0,
        **extra,
    }


def uniform_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every row with the union of keys (pyarrow infers a table's columns from the first row only)."""
    keys: dict[str, None] = {}
    for r in rows:
        keys.update(dict.fromkeys(r))
    return [{k: r.get(k) for k in keys} for r in rows]


def quarantine_path(output: Path) -> Path:
    """`<dir>/<stem>.quarantine.parquet` beside an output file or directory."""
    stem = output.name[: -len(output.suffix)] if output.suffix else output.name
    return output.with_name(f"{stem}.quarantine.parquet")


# Manifest fields every stage has (StageDir.write_manifest and pipeline._run_stage write them); the
# rest is the stage's own (`extra`). Written as one flat JSON object, as before.
_COMMON_TYPES: dict[str, tuple[type, ...]] = {
    "num_output": (int,),
    "num_quarantined": (int,),
    "reasons": (dict,),
    "num_parts": (int,),
    "config_hash": (str, type(None)),
    "wall_s": (int, float, type(None)),
    "num_input": (int, type(None)),
    "summary": (dict, type(None)),
}
_COUNTS = ("num_output", "num_quarantined", "reasons", "num_parts")  # always written


@dataclass(frozen=True)
class Manifest:
    """A stage's manifest.json, typed: the counts every stage writes, and its own fields in `extra`.

    config_hash and wall_s are absent only where no pipeline stage wrote the file (an evaluation's
    samples/, test fixtures); num_input where the stage did not count its input. Absent counts read
    as 0, as readers' `.get(key, 0)` did before.
    """

    num_output: int = 0
    num_quarantined: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    num_parts: int = 0
    config_hash: str | None = None
    wall_s: float | None = None
    num_input: int | None = None
    summary: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "manifest") -> Manifest:
        """Validate the common fields' types (ValueError naming `where` and the fields)."""
        if not isinstance(d, Mapping):
            raise ValueError(f"{where}: not a stage manifest (a JSON object); rerun its stage")
        bad = [
            f"{k}={d[k]!r}"
            for k, types in _COMMON_TYPES.items()
            if k in d and (not isinstance(d[k], types) or isinstance(d[k], bool))
        ]
        if bad:
            raise ValueError(
                f"{where}: not a stage manifest (wrong type: {', '.join(bad)}); "
                "rerun the stage that wrote it"
            )
        common = {k: d[k] for k in _COMMON_TYPES if k in d}
        return cls(**common, extra={k: v for k, v in d.items() if k not in _COMMON_TYPES})

    def to_dict(self) -> dict[str, Any]:
        """The JSON object as written: common fields (those set) and the extra ones, flat."""
        common = {
            k: getattr(self, k)
            for k in _COMMON_TYPES
            if k in _COUNTS or getattr(self, k) is not None
        }
        return {**common, **self.extra}


def read_manifest(path: str | Path) -> Manifest:
    """`<stage dir>/manifest.json` (or the file itself) as a validated Manifest."""
    p = Path(path)
    p = p / "manifest.json" if p.is_dir() else p
    return Manifest.from_dict(json.loads(p.read_text()), str(p))
