"""The pipeline against real outside components: S3 (moto server), `ray job submit`, a killed driver, two nodes."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import uuid

import duckdb
import pyarrow.dataset as pads
import pytest

from pipeline import RunOptions, read_results, run_job
from pipeline.sources import make_filesystem
from tests.fixtures.ray_cluster import REPO, ray_env
from tests.fixtures.s3 import FAKE_CREDENTIALS

pytestmark = pytest.mark.slow

EXAMPLES = ["lecture.ogg", "meeting.wav", "news.mp3", "podcast.flac", "weather.m4a"]


def jobs_run(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "jobs.run", *args], cwd=REPO, env=env or ray_env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw,
    )  # fmt: skip


def test_s3_in_one_bucket_out_to_another(ray_local, s3_server, example_audio_dir):
    s3_server.create_bucket("audio-in")
    s3_server.create_bucket("results-out")
    s3_server.upload_dir(example_audio_dir, "audio-in", "archive/2026")
    manifest = [{"audio": f"2026/{n}", "id": n} for n in EXAMPLES[:2]]
    manifest += [{"audio": "/etc/passwd", "id": "local-file"}, {"audio": "2026/missing.wav", "id": "missing"}]
    s3_server.client().put_object(Bucket="audio-in", Key="archive/manifest.jsonl",
                                  Body="".join(json.dumps(m) + "\n" for m in manifest).encode())  # fmt: skip
    out = "s3://results-out/transcripts"
    summary = run_job(
        RunOptions(input="s3://audio-in/archive/2026", output=out, s3_endpoint=s3_server.endpoint)
    )
    assert (summary.files_ok, summary.files_failed, summary.exit_code) == (5, 0, 0)

    res = read_results(out, s3_endpoint=s3_server.endpoint)
    assert res.files.column("id").to_pylist() == [f"s3://audio-in/archive/2026/{n}" for n in EXAMPLES]
    assert res.chunks.num_rows == 5 and set(res.chunks.column("status").to_pylist()) == {"ok"}
    # DuckDB over the same objects (through a pyarrow dataset on the S3 filesystem).
    s3 = make_filesystem(out, s3_server.endpoint)
    chunks = pads.dataset(
        "results-out/transcripts/chunks", filesystem=s3, format="parquet", partitioning="hive"
    )
    with duckdb.connect() as con:
        con.register("chunks", chunks)
        n, kept, audio = con.execute(
            "select count(*), sum(kept_tokens), sum(audio_tokens) from chunks"
        ).fetchone()
    assert (
        n == 5
        and kept == sum(int(a * 0.6) for a in res.chunks.column("audio_tokens").to_pylist())
        and audio > 0
    )

    # A manifest in S3: relative keys resolve under its prefix; a local path is refused, a missing key reported.
    out2 = "s3://results-out/qa"
    s2 = run_job(RunOptions(input="s3://audio-in/archive/manifest.jsonl", output=out2, s3_endpoint=s3_server.endpoint,
                            task="qa", question="What is this about?", max_error_fraction=1.0))  # fmt: skip
    files = {r["id"]: r for r in read_results(out2, s3_endpoint=s3_server.endpoint).files.to_pylist()}
    assert (
        files["lecture.ogg"]["status"] == "ok" and files["lecture.ogg"]["question"] == "What is this about?"
    )
    assert files["local-file"]["error_kind"] == "forbidden" and files["missing"]["error_kind"] == "not_found"
    assert (s2.files_ok, s2.files_failed) == (2, 2)

    # No credential reaches any output object.
    c = s3_server.client()
    keys = [o["Key"] for o in c.list_objects_v2(Bucket="results-out")["Contents"]]
    assert any(k.endswith(".json") for k in keys) and any("/files/run=" in k for k in keys)
    for k in keys:
        body = c.get_object(Bucket="results-out", Key=k)["Body"].read()
        for secret in (FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"], FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"]):
            assert secret.encode() not in body, k


def test_killed_driver_then_rerun_gives_each_source_exactly_once(ray_local, example_audio_dir, tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    for i in range(8):
        shutil.copy(example_audio_dir / "meeting.wav", archive / f"meeting-{i}.wav")
    out = tmp_path / "out"
    proc = jobs_run("--input", str(archive), "--output", str(out), "--address", ray_local.address,
                    "--commit-every-s", "0.2", "--workers", "1..1", "--batch-size", "1", "--window-s", "4")  # fmt: skip
    deadline = time.monotonic() + 240
    while not list((out / "files").rglob("*.parquet")):
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "no commit within 240 s"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    first = read_results(str(out))
    done_first = first.files.num_rows
    assert 1 <= done_first < 8, "the driver must die mid-run for this test to mean anything"

    summary = run_job(RunOptions(input=str(archive), output=str(out), window_s=4.0, workers=(1, 1)))
    assert summary.files_skipped == done_first and summary.files_ok == 8 - done_first
    res = read_results(str(out))
    ids = res.files.column("id").to_pylist()
    assert sorted(ids) == sorted(str(p) for p in archive.iterdir())
    with duckdb.connect() as con:  # raw rows: no source committed twice, even before the reading rule
        raw = con.execute(
            f"select count(*), count(distinct id) from read_parquet('{out}/files/**/*.parquet')"
        )
        assert raw.fetchone() == (8, 8)
    for sid in ids:
        mine = [c for c in res.chunks.to_pylist() if c["id"] == sid]
        assert [c["chunk_index"] for c in mine] == list(range(len(mine))) and len(mine) >= 6
        assert len({c["attempt_id"] for c in mine}) == 1


def test_ray_job_submit_end_to_end(ray_head, example_audio_dir, tmp_path):
    out = tmp_path / "out"
    sid = f"pipeline-test-{uuid.uuid4().hex[:8]}"
    excludes = {"excludes": [".venv/", ".git/", "out/", "data/", "*.parquet"]}
    cmd = ["ray", "job", "submit", "--address", ray_head.dashboard_url, "--submission-id", sid,
           "--working-dir", str(REPO), "--runtime-env-json", json.dumps(excludes), "--",
           "python", "-m", "jobs.run", "--input", str(example_audio_dir), "--output", str(out), "--workers", "1..1"]  # fmt: skip
    done = subprocess.run(cmd, env=ray_head.env, cwd=REPO, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "files ok / failed       5 / 0" in done.stdout  # the job's summary table, streamed back
    status = subprocess.run(["ray", "job", "status", "--address", ray_head.dashboard_url, sid],
                            env=ray_head.env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert status.returncode == 0 and f"Job '{sid}' succeeded" in status.stdout + status.stderr
    from ray.job_submission import JobStatus, JobSubmissionClient

    assert JobSubmissionClient(ray_head.dashboard_url).get_job_status(sid) == JobStatus.SUCCEEDED
    res = read_results(str(out))
    assert res.files.num_rows == 5 and set(res.files.column("status").to_pylist()) == {"ok"}


def test_gpu_actors_are_placed_only_on_the_gpu_node(two_node_cluster, example_audio_dir, tmp_path):
    cluster, gpu_node = two_node_cluster
    out = tmp_path / "out"
    proc = jobs_run("--input", str(example_audio_dir), "--output", str(out), "--address", cluster.address,
                    "--gpus-per-worker", "1", "--workers", "1..2", "--window-s", "10")  # fmt: skip
    log, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, log[-3000:]
    chunks = read_results(str(out)).chunks
    assert chunks.num_rows >= 10
    assert set(chunks.column("node_id").to_pylist()) == {gpu_node.node_id}
    assert gpu_node.node_id != cluster.head_node.node_id


def test_cli_user_mistakes_exit_2_with_one_line(tmp_path):
    for args, needle in [
        (["--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o")], "input not found"),
        (["--input", str(tmp_path), "--output", str(tmp_path / "o"), "--retain", "2"], "--retain"),
        (["--input", str(tmp_path), "--output", str(tmp_path / "o"), "--workers", "x"], "--workers"),
        (["--output", str(tmp_path / "o")], "--input"),
    ]:
        done = subprocess.run(
            [sys.executable, "-m", "jobs.run", *args], cwd=REPO, capture_output=True, text=True
        )
        assert done.returncode == 2, done.stderr
        lines = [ln for ln in done.stderr.splitlines() if "jobs.run: error" in ln]
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in done.stderr
