"""Invariants every reliability test checks after its fault: each source exactly once, no duplicate or
partial output. Shared by tests/test_reliability_*.py."""

from __future__ import annotations

import pyarrow.parquet as pq
from pyarrow import fs as pafs

from pipeline import read_results
from pipeline.sources import fs_path, make_filesystem


def visible_parts(output: str, s3_endpoint: str | None = None) -> list[str]:
    """Every Parquet file a reader globbing `**/*.parquet` would see under `output`."""
    fs = make_filesystem(output, s3_endpoint)
    infos = fs.get_file_info(pafs.FileSelector(fs_path(output), recursive=True, allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet"))


def assert_no_partial_parquet(output: str, s3_endpoint: str | None = None) -> int:
    """Every visible (non-hidden) Parquet part is complete: footer readable and every row decodes."""
    fs = make_filesystem(output, s3_endpoint)
    n = 0
    for path in visible_parts(output, s3_endpoint):
        if path.rsplit("/", 1)[-1].startswith("."):
            continue  # temporary names: readers skip them (and they never end in .parquet today)
        with fs.open_input_file(path) as f:
            meta = pq.read_metadata(f)
        with fs.open_input_file(path) as f:
            table = pq.read_table(f)
        assert table.num_rows == meta.num_rows, (
            f"{path}: footer says {meta.num_rows} rows, read {table.num_rows}"
        )
        n += 1
    return n


def assert_exactly_once(output: str, ids: set[str], s3_endpoint: str | None = None) -> dict[str, dict]:
    """The deduplicated output holds one files/ row per listed id (no more, no fewer) and, for each, a
    complete contiguous run of unique chunk rows. Returns id -> files row."""
    res = read_results(output, s3_endpoint)
    files = res.files.to_pylist()
    by_id = {r["id"]: r for r in files}
    assert len(by_id) == len(files), "a source has two files/ rows after deduplication"
    assert set(by_id) == set(ids), (
        f"missing {sorted(set(ids) - set(by_id))[:5]}, unexpected {sorted(set(by_id) - set(ids))[:5]}"
    )
    chunks: dict[str, list[dict]] = {}
    for c in res.chunks.to_pylist():
        chunks.setdefault(c["id"], []).append(c)
    for sid, f in by_id.items():
        mine = chunks.get(sid, [])
        assert [c["chunk_index"] for c in mine] == list(range(f["num_chunks"])), f"{sid}: chunks not 0..n-1"
        assert all(c["attempt_id"] == f["attempt_id"] for c in mine)
        assert mine and mine[0]["start_s"] == 0.0 and mine[-1].get("last")
        assert all(a["end_s"] == b["start_s"] for a, b in zip(mine, mine[1:])), f"{sid}: gap between chunks"
    assert_no_partial_parquet(output, s3_endpoint)
    return by_id
