"""Parquet output with a per-source commit: chunk rows first, then the source's files/ row.

Layout under the output root:
    chunks/run=<run_id>/part-<attempt>-<seq>.parquet   one row per chunk
    files/run=<run_id>/part-<attempt>-<seq>.parquet    one row per source: the commit record
    runs/<run_id>.json                                  run summary
A part is written under a hidden temporary name and renamed (local disk) or uploaded in one PUT (S3), so a
killed run never leaves a readable half file. A source's files/ row is written only after every one of its chunk
rows is durable; readers (pipeline.read_results) count a source as done only through its files/ row.
"""

from __future__ import annotations

import json
import logging
import posixpath
import time
import uuid
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

log = logging.getLogger("pipeline")

# Every output column and its type, once; each table lists its columns in order, so a column both tables
# hold (identity, status, request, pruning, timing) has one type.
_TYPES = {
    "run_id": pa.string(),
    "attempt_id": pa.string(),
    "id": pa.string(),
    "source": pa.string(),
    "chunk_index": pa.int32(),
    "start_s": pa.float64(),
    "end_s": pa.float64(),
    "status": pa.string(),
    "error": pa.string(),
    "error_kind": pa.string(),
    "task": pa.string(),
    "question": pa.string(),
    "text": pa.string(),
    "duration_s": pa.float64(),
    "num_chunks": pa.int32(),
    "num_errors": pa.int32(),
    "model": pa.string(),
    "method": pa.string(),
    "retain": pa.float64(),
    "budget": pa.string(),  # fixed | adaptive: how each chunk's kept count was chosen (PruneOptions.budget)
    "audio_tokens": pa.int64(),
    "kept_tokens": pa.int64(),
    "alpha_semantic": pa.float64(),
    "alpha_uniform": pa.float64(),
    "alpha_acoustic": pa.float64(),
    "spread": pa.float64(),
    "prefill_s": pa.float64(),
    "decode_s": pa.float64(),
    "prepare_s": pa.float64(),  # host-side preparation (checks, features, the padded batch), the chunk's share
    "queue_s": pa.float64(),  # continuous batching (--slots): seconds in the actor's queue before the prefill
    "kv_bytes_full": pa.int64(),
    "kv_bytes_kept": pa.int64(),
    "skipped_s": pa.float64(),
    "silent": pa.bool_(),
    "shadow_text": pa.string(),  # the unpruned answer of a shadowed chunk (--shadow-fraction), else null
    "shadow_agreement": pa.float64(),  # pruned vs unpruned (quality.agreement); files/: mean over shadowed chunks
    "shadow_s": pa.float64(),  # the shadow run's model time, not in prefill_s / decode_s
    "last": pa.bool_(),
    "node_id": pa.string(),
    "committed_at": pa.timestamp("us", tz="UTC"),
}
_IDENTITY = ("run_id", "attempt_id", "id", "source")
_PRUNING = ("model", "method", "retain", "budget", "audio_tokens", "kept_tokens", "alpha_semantic", "alpha_uniform",
            "alpha_acoustic")  # fmt: skip


def _schema(*names: str) -> pa.Schema:
    return pa.schema([(n, _TYPES[n]) for n in names])


# one row per chunk: the model's answer for one window of audio
CHUNK_SCHEMA = _schema(
    *_IDENTITY, "chunk_index", "start_s", "end_s", "status", "error", "task", "question", "text", *_PRUNING,
    "spread", "prefill_s", "decode_s", "prepare_s", "queue_s", "kv_bytes_full", "kv_bytes_kept", "skipped_s", "silent", "shadow_text", "shadow_agreement", "shadow_s", "last", "node_id",
)  # fmt: skip
# one row per source file: its chunks' text joined, totals and means over its chunks
FILE_SCHEMA = _schema(
    *_IDENTITY, "status", "error", "error_kind", "text", "duration_s", "num_chunks", "num_errors", "task",
    "question", *_PRUNING, "prefill_s", "decode_s", "prepare_s", "shadow_agreement", "committed_at",
)  # fmt: skip


def write_table_atomic(fs: pafs.FileSystem, path: str, table: pa.Table) -> None:
    """Write `table` so that `path` is either absent or a complete Parquet file."""
    fs.create_dir(posixpath.dirname(path), recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = posixpath.join(
            posixpath.dirname(path), f".{posixpath.basename(path)}.{uuid.uuid4().hex[:8]}.tmp"
        )
        pq.write_table(table, tmp, filesystem=fs)
        fs.move(tmp, path)  # rename(2): atomic on one filesystem
    else:  # object stores make an object visible only when its upload completes
        pq.write_table(table, path, filesystem=fs)


def write_json_atomic(fs: pafs.FileSystem, path: str, obj: dict) -> None:
    fs.create_dir(posixpath.dirname(path), recursive=True)
    data = (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()
    target = path
    if isinstance(fs, pafs.LocalFileSystem):
        target = posixpath.join(posixpath.dirname(path), f".{posixpath.basename(path)}.tmp")
    with fs.open_output_stream(target) as out:
        out.write(data)
    if target != path:
        fs.move(target, path)


class ResultSink:
    """Collects chunk rows as they stream in and commits them, source by source, to Parquet."""

    def __init__(
        self, fs: pafs.FileSystem, root: str, run_id: str, attempt_id: str, commit_every_s: float = 10.0
    ):
        self.fs, self.root, self.run_id, self.attempt_id = fs, root.rstrip("/"), run_id, attempt_id
        self.commit_every_s = commit_every_s
        self._pending: list[dict] = []  # chunk rows not yet written
        self._open: dict[str, dict[int, dict]] = {}  # id -> chunk_index -> row, for sources not yet committed
        self._done: set[str] = set()
        self._seq = 0
        self._last_commit = time.monotonic()
        self.committed: list[dict] = []  # files rows committed so far (small: no audio)
        self.shadow_agreements: list[float] = []  # every shadowed chunk's agreement, for the run's interval

    def add(self, rows: list[dict]) -> None:
        for row in rows:
            sid, idx = row["id"], int(row["chunk_index"])
            chunks = self._open.setdefault(sid, {})
            if sid in self._done or idx in chunks:  # a retried task may deliver a row twice: keep the first
                continue
            chunks[idx] = row
            self._pending.append(row)
            if row.get("shadow_agreement") is not None:
                self.shadow_agreements.append(float(row["shadow_agreement"]))
        if time.monotonic() - self._last_commit >= self.commit_every_s:
            self.commit()

    def commit(self) -> None:
        """Write pending chunk rows, then the files/ rows of every source whose chunks are now all durable."""
        self._last_commit = time.monotonic()
        if not self._pending:
            return
        self._seq += 1
        name = f"part-{self.attempt_id}-{self._seq:05d}.parquet"
        chunk_table = pa.Table.from_pylist(
            [_fit(r, CHUNK_SCHEMA) for r in self._pending], schema=CHUNK_SCHEMA
        )
        write_table_atomic(self.fs, f"{self.root}/chunks/run={self.run_id}/{name}", chunk_table)
        self._pending = []
        complete = [sid for sid, chunks in self._open.items() if _complete(chunks)]
        if not complete:
            return
        now = datetime.now(UTC)
        file_rows = []
        for sid in complete:
            chunks = self._open.pop(sid)
            file_rows.append(file_row([chunks[i] for i in sorted(chunks)], now))
        write_table_atomic(
            self.fs,
            f"{self.root}/files/run={self.run_id}/{name}",
            pa.Table.from_pylist(file_rows, schema=FILE_SCHEMA),
        )
        self._done.update(complete)
        self.committed.extend(file_rows)

    def close(self) -> list[str]:
        """Commit everything; return ids whose chunks never all arrived (left uncommitted, so a rerun redoes them)."""
        self.commit()
        missing = sorted(self._open)
        if missing:
            log.error("%d sources are missing chunks and were not committed: %s", len(missing), missing[:5])
        return missing


def _complete(chunks: dict[int, dict]) -> bool:
    last = [i for i, r in chunks.items() if r.get("last")]
    return bool(last) and len(chunks) == last[0] + 1


def file_row(chunks: list[dict], committed_at: datetime) -> dict:
    """The files/ row of one source from its chunk rows (sorted by chunk_index)."""
    first = chunks[0]
    errors = [c for c in chunks if c["status"] != "ok"]
    ok = [c for c in chunks if c["status"] == "ok"]
    all_silent = bool(ok) and all(c.get("silent") for c in ok)
    if errors:
        error, status = errors[0]["error"], "error"
    elif all_silent:
        error, status = "silent: no audio signal in the whole source", "error"
    else:
        error, status = "", "ok"
    routed = [c for c in ok if c.get("alpha_semantic") is not None]

    def mean(key):
        return sum(c[key] for c in routed) / len(routed) if routed else None

    shadow = [c["shadow_agreement"] for c in ok if c.get("shadow_agreement") is not None]
    return {
        "run_id": first["run_id"],
        "attempt_id": first["attempt_id"],
        "id": first["id"],
        "source": first["source"],
        "status": status,
        "error": error,
        "error_kind": error.split(":", 1)[0] if error else "",
        "text": " ".join(t for t in (str(c.get("text") or "").strip() for c in ok) if t),
        "duration_s": float(chunks[-1]["end_s"] or 0.0),
        "num_chunks": len(chunks),
        "num_errors": len(errors),
        "task": first.get("task"),
        "question": first.get("question"),
        "model": first.get("model"),
        "method": first.get("method"),
        "retain": first.get("retain"),
        "budget": first.get("budget"),
        "audio_tokens": sum(int(c.get("audio_tokens") or 0) for c in ok),
        "kept_tokens": sum(int(c.get("kept_tokens") or 0) for c in ok),
        "alpha_semantic": mean("alpha_semantic"),
        "alpha_uniform": mean("alpha_uniform"),
        "alpha_acoustic": mean("alpha_acoustic"),
        "prefill_s": sum(float(c.get("prefill_s") or 0.0) for c in ok),
        "decode_s": sum(float(c.get("decode_s") or 0.0) for c in ok),
        "prepare_s": sum(float(c.get("prepare_s") or 0.0) for c in ok),
        "shadow_agreement": sum(shadow) / len(shadow) if shadow else None,
        "committed_at": committed_at,
    }


def _fit(row: dict, schema: pa.Schema) -> dict:
    return {name: _plain(row.get(name)) for name in schema.names}


def _plain(v):
    return v.item() if hasattr(v, "item") and getattr(v, "ndim", 1) == 0 else v
