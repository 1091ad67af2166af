"""The hostile-input corpus through the whole pipeline on real Ray, from a local folder and from S3 (moto).

Each source gets exactly one files/ row: 'error' with a clear one-line error of an expected kind, or 'ok' with
the right duration where the file is valid but odd; the batch always completes.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from pipeline import RunOptions, run_job
from tests.hostile_corpus import corpus, write_corpus
from tests.reliability_checks import assert_exactly_once

pytestmark = pytest.mark.slow


def _check(row: dict, case, label: str) -> None:
    if case.errors:
        assert row["status"] == "error", f"{label}: expected an error, got {row['text']!r}"
        assert row["error_kind"] in case.errors, f"{label}: {row['error']!r}"
        assert row["error"].startswith(row["error_kind"] + ": ") and "\n" not in row["error"]
        assert len(row["error"]) <= 300
    else:
        assert row["status"] == "ok", f"{label}: {row['error']!r}"
        if case.duration_s is not None:
            assert row["duration_s"] == pytest.approx(case.duration_s, abs=0.1), label
    if case.chunks is not None:
        assert row["num_chunks"] in (case.chunks, case.chunks + 1), label


def test_hostile_corpus_from_a_local_folder(ray_local, tmp_path):
    folder = tmp_path / "hostile"
    paths = write_corpus(str(folder))
    vanishing = folder / "vanishes after listing.wav"
    vanishing.write_bytes(open(next(p for p, c in paths.items() if c.kind == "name_spaces"), "rb").read())
    out = tmp_path / "out"
    opts = RunOptions(
        input=str(folder), output=str(out), workers=(1, 1), batch_size=4, max_error_fraction=1.0
    )

    start = time.monotonic()
    summary = run_job(opts, commit_every_s=2.0, on_start=lambda run_id: os.remove(vanishing))
    wall = time.monotonic() - start

    files = assert_exactly_once(str(out), set(paths) | {str(vanishing)})
    for path, case in paths.items():
        _check(files[path], case, case.kind)
    assert files[str(vanishing)]["error_kind"] == "not_found"
    assert summary.exit_code == 0 and summary.files_listed == len(paths) + 1
    assert summary.files_ok + summary.files_failed == len(paths) + 1
    assert wall < 180, f"the corpus took {wall:.0f} s: some input is not bounded"
    # The run summary is valid JSON with the same accounting.
    run = json.loads((out / "runs" / f"{summary.run_id}.json").read_text())
    assert run["status"] == "complete" and run["files_failed"] == summary.files_failed


def test_hostile_corpus_from_s3(ray_local, s3_server, tmp_path):
    """S3 specifics: a key with a '..' segment, an object the credentials may not read, one deleted after
    listing; plus the byte-level hostile cases."""
    s3 = s3_server.client()
    bucket = s3_server.create_bucket("hostile-in")
    s3_server.create_bucket("hostile-out")
    cases = {
        c.kind: c for c in corpus() if c.kind not in ("silent_hour", "name_newline")
    }  # both done locally
    folder = tmp_path / "hostile"
    paths = write_corpus(str(folder), list(cases.values()))
    expected: dict[str, object] = {}
    for path, case in paths.items():
        key = f"in/{case.name}"
        s3.upload_file(path, bucket, key)
        expected[f"s3://{bucket}/{key}"] = case
    good = next(p for p, c in paths.items() if c.kind == "name_spaces")
    for key in ("in/secret.wav", "in/vanishing.wav", "in/../dotdot.wav"):
        s3.upload_file(good, bucket, key)
    s3.put_bucket_policy(
        Bucket=bucket,
        Policy=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Deny",
                        "Principal": "*",
                        "Action": "s3:GetObject",
                        "Resource": f"arn:aws:s3:::{bucket}/in/secret.wav",
                    }
                ],
            }
        ),
    )
    opts = RunOptions(
        input=f"s3://{bucket}/in/",
        output="s3://hostile-out/run",
        s3_endpoint=s3_server.endpoint,
        workers=(1, 1),
        batch_size=4,
        max_error_fraction=1.0,
    )
    summary = run_job(
        opts,
        commit_every_s=2.0,
        on_start=lambda run_id: s3.delete_object(Bucket=bucket, Key="in/vanishing.wav"),
    )

    special = {f"s3://{bucket}/in/{k}" for k in ("secret.wav", "vanishing.wav", "../dotdot.wav")}
    files = assert_exactly_once(opts.output, set(expected) | special, s3_server.endpoint)
    for uri, case in expected.items():
        _check(files[uri], case, case.kind)
    assert files[f"s3://{bucket}/in/secret.wav"]["error_kind"] == "permission_denied"
    assert files[f"s3://{bucket}/in/vanishing.wav"]["error_kind"] == "not_found"
    dotdot = files[f"s3://{bucket}/in/../dotdot.wav"]
    assert dotdot["status"] == "ok" or dotdot["error_kind"] in ("not_found", "forbidden"), dotdot["error"]
    assert summary.files_listed == len(expected) + 3
