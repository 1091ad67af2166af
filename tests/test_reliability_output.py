"""The reader under storage faults: a part that cannot be read right now is an error, never silently missing rows."""

from __future__ import annotations

import pytest

from pipeline import read_results
from pipeline.resume import completed_ids
from pipeline.sink import ResultSink
from pipeline.sources import make_filesystem
from tests.faults_proxy import FaultProxy


def _row(sid: str, attempt: str) -> dict:
    return {"run_id": "r1", "attempt_id": attempt, "id": sid, "source": f"s3://x/{sid}", "chunk_index": 0,
            "start_s": 0.0, "end_s": 2.0, "status": "ok", "error": "", "task": "asr", "text": "t", "last": True}  # fmt: skip


def test_an_unreadable_part_fails_the_read_instead_of_dropping_rows(s3_server):
    """Two commits (two files/ parts) on S3; then reads of one part are refused (403, not retried by the
    client). read_results and the resume check must raise rather than return one source fewer."""
    s3_server.create_bucket("reader-faults")
    fs = make_filesystem("s3://reader-faults", s3_server.endpoint)
    sink = ResultSink(fs, "reader-faults/out", "r1", "a1", commit_every_s=1e9)
    sink.add([_row("one", "a1")])
    sink.commit()
    sink.add([_row("two", "a1")])
    sink.close()
    assert read_results("s3://reader-faults/out", s3_server.endpoint).files.num_rows == 2

    with FaultProxy(int(s3_server.endpoint.rsplit(":", 1)[1])) as proxy:
        proxy.inject(
            "403", methods=("GET", "HEAD"), path=r"/out/files/run.*part-a1-00002\.parquet", count=10**6
        )
        with pytest.raises(OSError):
            read_results("s3://reader-faults/out", proxy.url)
        with pytest.raises(OSError):
            completed_ids(make_filesystem("s3://reader-faults", proxy.url), "reader-faults/out")
        assert proxy.stats.faults.get("403", 0) >= 2
