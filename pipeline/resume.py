"""Exactly-once across reruns: which sources are done, and the deduplicated view of all runs' output.

Reading rule (the only one readers should use):
1. files/ rows from every run are the commit records. Per source `id` the latest row (by committed_at, then
   run_id, attempt_id) wins; earlier rows for that id (a failed attempt later retried) are superseded.
2. chunks/ rows count only if their (attempt_id, id) matches the winning files/ row; chunk rows of sources that
   never got a files/ row (a killed run) are ignored, and a repeated (attempt_id, id, chunk_index) is kept once.
3. Hidden names ('.*', temporary uploads) and files that are not Parquet are skipped; a part the store fails to
   read is an error (OSError), never silently missing rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from pipeline.sink import CHUNK_SCHEMA, FILE_SCHEMA
from pipeline.sources import fs_path, make_filesystem

log = logging.getLogger("pipeline")


@dataclass(frozen=True)
class Results:
    files: pa.Table  # one row per source (FILE_SCHEMA)
    chunks: pa.Table  # the chunk rows of those files rows, ordered by id, chunk_index (CHUNK_SCHEMA)


def read_parts(fs: pafs.FileSystem, folder: str, schema: pa.Schema) -> pa.Table:
    """All complete Parquet parts under `folder` (recursively) as one table with `schema`."""
    try:
        infos = fs.get_file_info(pafs.FileSelector(folder, recursive=True, allow_not_found=True))
    except OSError as e:
        raise OSError(f"cannot list {folder}: {e}") from None
    tables = []
    for info in sorted(infos, key=lambda i: i.path):
        name = info.path.rsplit("/", 1)[-1]
        if info.type != pafs.FileType.File or name.startswith(".") or not name.endswith(".parquet"):
            continue
        try:
            t = pq.read_table(info.path, filesystem=fs)
        except pa.ArrowInvalid as e:  # not Parquet, e.g. a truncated part written by another tool
            log.warning("skipping unreadable part %s: %s", info.path, e)
            continue
        # An OSError (store refusing or failing the read) propagates: skipping would silently drop rows.
        tables.append(t.select([n for n in schema.names if n in t.column_names]).cast(_sub(schema, t)))
    if not tables:
        return schema.empty_table()
    t = pa.concat_tables(tables, promote_options="default")
    for i, field in enumerate(schema):  # parts written by an older schema lack newer columns
        if field.name not in t.column_names:
            t = t.add_column(i, field, pa.nulls(t.num_rows, field.type))
    return t.select(schema.names)


def latest_files(files: pa.Table) -> pa.Table:
    """One row per id: the latest commit (reading rule 1)."""
    if files.num_rows == 0:
        return files
    order = files.sort_by(
        [
            ("id", "ascending"),
            ("committed_at", "descending"),
            ("run_id", "descending"),
            ("attempt_id", "descending"),
        ]
    )
    ids = order.column("id").to_pylist()
    keep = [i for i in range(len(ids)) if i == 0 or ids[i] != ids[i - 1]]
    return order.take(pa.array(keep, pa.int64()))


def completed_ids(fs: pafs.FileSystem, root: str, retry_errors: bool = False) -> set[str]:
    """Ids that need no work: committed 'ok', or committed 'error' unless retry_errors."""
    latest = latest_files(read_parts(fs, f"{root}/files", FILE_SCHEMA))
    if retry_errors:
        latest = latest.filter(pc.equal(latest.column("status"), "ok"))
    return set(latest.column("id").to_pylist())


def read_results(output: str, s3_endpoint: str | None = None) -> Results:
    """The deduplicated result of every run written under `output` (reading rules 1-3)."""
    fs = make_filesystem(output, s3_endpoint)
    root = fs_path(output)
    files = latest_files(read_parts(fs, f"{root}/files", FILE_SCHEMA)).sort_by("id")
    chunks = read_parts(fs, f"{root}/chunks", CHUNK_SCHEMA)
    winners = {(a, i) for a, i in zip(files.column("attempt_id").to_pylist(), files.column("id").to_pylist())}
    keys = zip(
        chunks.column("attempt_id").to_pylist(),
        chunks.column("id").to_pylist(),
        chunks.column("chunk_index").to_pylist(),
    )
    seen: set = set()
    keep = []
    for n, (a, i, c) in enumerate(keys):
        if (a, i) in winners and (a, i, c) not in seen:
            seen.add((a, i, c))
            keep.append(n)
    chunks = chunks.take(pa.array(keep, pa.int64())).sort_by(
        [("id", "ascending"), ("chunk_index", "ascending")]
    )
    return Results(files=files, chunks=chunks)


def _sub(schema: pa.Schema, t: pa.Table) -> pa.Schema:
    return pa.schema([schema.field(n) for n in schema.names if n in t.column_names])
