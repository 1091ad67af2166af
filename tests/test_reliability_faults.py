"""Fault injection against real Ray and a real S3 server process: after each fault every source is accounted
for exactly once, no row is duplicated and no partial Parquet file is readable as complete."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf

from pipeline import RunFailed, RunOptions, run_job
from tests.faults_proxy import FaultProxy
from tests.hostile_corpus import tone
from tests.reliability_checks import assert_exactly_once, assert_no_partial_parquet

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


class After:
    """Run observer: calls `action()` once, in the driver, when the n-th chunk row has arrived."""

    def __init__(self, n: int, action):
        self.n, self.action, self.seen = n, action, 0

    def observe(self, row: dict) -> None:
        self.seen += 1
        if self.seen == self.n:
            self.action()


def archive(folder: Path, n: int, seconds: float = 2.0) -> set[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        sf.write(folder / f"f{i:03d}.wav", tone(seconds, seed=i), 16000)
    return {str(p) for p in sorted(folder.glob("*.wav"))}


def _inference_actors(dashboard: str, job_id: str | None = None) -> list:
    from ray.util.state import list_actors

    actors = list_actors(address=dashboard, filters=[("state", "=", "ALIVE")], detail=True, limit=1000)
    return [a for a in actors if "InferenceWorker" in a.class_name and (job_id is None or a.job_id == job_id)]


def test_inference_actor_killed_mid_batch(ray_local, tmp_path):
    import ray

    ids = archive(tmp_path / "in", 16)
    out = tmp_path / "out"
    job_id = ray.get_runtime_context().get_job_id()
    killed: list[int] = []

    def kill_actor():
        pid = _inference_actors(ray_local.dashboard_url, job_id)[0].pid
        os.kill(pid, signal.SIGKILL)  # the actor dies while it holds the next batches
        killed.append(pid)

    opts = RunOptions(input=str(tmp_path / "in"), output=str(out), workers=(1, 1), batch_size=2)
    summary = run_job(opts, commit_every_s=1.0, observer=After(2, kill_actor))

    assert killed, "the fault was never injected"
    files = assert_exactly_once(str(out), ids)
    assert all(f["status"] == "ok" for f in files.values()), [f["error"] for f in files.values()]
    assert (summary.files_ok, summary.files_failed, summary.exit_code) == (16, 0, 0)
    assert all(a.pid != killed[0] for a in _inference_actors(ray_local.dashboard_url))


def test_worker_node_removed_mid_run(two_node_cluster, tmp_path):
    """The only GPU node (where the inference actors must run) dies mid-run and a replacement joins."""
    cluster, gpu_node = two_node_cluster
    ids = archive(tmp_path / "in", 40, seconds=4.0)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "jobs.run", "--input", str(tmp_path / "in"), "--output", str(out)]
    cmd += ["--address", cluster.address, "--gpus-per-worker", "1", "--workers", "1", "--batch-size", "1"]
    cmd += ["--commit-every-s", "0.5"]
    log = tmp_path / "driver.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=_env())
    replacement = None
    try:
        _wait_for(lambda: list((out / "files").rglob("*.parquet")), proc, 180, log)
        old_node = gpu_node.node_id
        cluster.remove_node(gpu_node, allow_graceful=False)
        replacement = cluster.add_node(num_cpus=1, num_gpus=1, node_ip_address="127.0.0.1")
        rc = proc.wait(timeout=240)
    finally:
        _stop(proc)
    assert rc == 0, log.read_text()[-3000:]
    files = assert_exactly_once(str(out), ids)
    assert all(f["status"] == "ok" for f in files.values())
    from pipeline import read_results

    nodes = set(read_results(str(out)).chunks.column("node_id").to_pylist())
    assert old_node in nodes and replacement.node_id in nodes, f"work did not span the node loss: {nodes}"


def test_object_store_errors_and_dropped_connections(ray_local, s3_server, tmp_path):
    """Stretches of 503s, 500s, dropped connections and cut bodies on the S3 calls (reads and writes) at the
    start and again mid-run: the run rides them out. Every other request fails during a stretch, so the
    client's retries can always get through: anything lost would be the pipeline's fault."""
    s3 = s3_server.client()
    s3_server.create_bucket("flaky-in")
    s3_server.create_bucket("flaky-out")
    paths = archive(tmp_path / "in", 6)
    for p in paths:
        s3.upload_file(p, "flaky-in", f"a/{Path(p).name}")
    ids = {f"s3://flaky-in/a/{Path(p).name}" for p in paths}
    with FaultProxy(int(s3_server.endpoint.rsplit(":", 1)[1])) as proxy:

        def burst(*_):
            for mode in ("503", "500", "drop"):
                proxy.inject(mode, count=3, every=2)
            proxy.inject("truncate", methods=("GET",), count=2, every=2)

        class Bursts:
            seen = 0

            def observe(self, row):
                self.seen += 1
                if self.seen == 3:
                    burst()

        opts = RunOptions(
            input="s3://flaky-in/a/",
            output="s3://flaky-out/o",
            s3_endpoint=proxy.url,
            workers=(1, 1),
            batch_size=2,
        )
        summary = run_job(opts, commit_every_s=0.5, on_start=burst, observer=Bursts())
        faults = dict(proxy.stats.faults)
    assert sum(faults.values()) >= 18 and {"503", "500", "drop"} <= set(faults), faults
    files = assert_exactly_once(opts.output, ids, s3_server.endpoint)
    assert all(f["status"] == "ok" for f in files.values()), [f["error"] for f in files.values()]
    assert summary.files_ok == 6


def test_output_location_failing_to_write(ray_local, s3_server, tmp_path):
    """Every write to the output is refused after listing (a permission revoked mid-run): the run stops with a
    clear one-line error and leaves nothing readable as complete; the rerun, once writes are allowed again,
    completes each source exactly once."""
    s3_server.create_bucket("broken-out")
    ids = archive(tmp_path / "in", 6)
    with FaultProxy(int(s3_server.endpoint.rsplit(":", 1)[1])) as proxy:
        opts = RunOptions(
            input=str(tmp_path / "in"),
            output="s3://broken-out/o",
            s3_endpoint=proxy.url,
            workers=(1, 1),
            batch_size=2,
        )
        start = time.monotonic()
        with pytest.raises(RunFailed) as failed:
            run_job(
                opts,
                commit_every_s=0.5,
                on_start=lambda run_id: proxy.inject("403", methods=("PUT", "POST"), seconds=3600),
            )
        assert time.monotonic() - start < 180
        message = str(failed.value)
        assert "\n" not in message and len(message) < 500 and "broken-out" in message, message
        assert proxy.stats.faults.get("403", 0) > 0
        proxy.clear()
        assert_no_partial_parquet(opts.output, s3_server.endpoint)
        summary = run_job(opts, commit_every_s=0.5)
    files = assert_exactly_once(opts.output, ids, s3_server.endpoint)
    assert all(f["status"] == "ok" for f in files.values())
    assert summary.files_ok == 6


def test_driver_killed_and_rerun(ray_local, tmp_path):
    """SIGKILL of `python -m jobs.run` after its first commit; the same command again finishes the job."""
    ids = archive(tmp_path / "in", 14)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "jobs.run", "--input", str(tmp_path / "in"), "--output", str(out)]
    cmd += ["--address", ray_local.address, "--workers", "1", "--batch-size", "1", "--commit-every-s", "0.3"]
    log = tmp_path / "driver.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=_env())
    try:
        _wait_for(lambda: list((out / "files").rglob("*.parquet")), proc, 180, log)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        _stop(proc)
    first = assert_no_partial_parquet(str(out))
    assert first >= 2  # at least one chunks/ and one files/ part from the killed run

    rerun = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    files = assert_exactly_once(str(out), ids)
    assert all(f["status"] == "ok" for f in files.values())
    runs = [json.loads(p.read_text()) for p in (out / "runs").glob("*.json")]
    done = [r for r in runs if r["status"] == "complete"]
    assert len(runs) == 2 and len(done) == 1
    assert 1 <= done[0]["files_skipped"] < 14, "the rerun must skip what the killed run committed"
    assert done[0]["files_skipped"] + done[0]["files_ok"] == 14
    assert len({f["run_id"] for f in files.values()}) == 2


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    env.pop("RAY_ADDRESS", None)
    return env


def _wait_for(predicate, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(
                f"driver exited ({proc.returncode}) before the fault:\n{log.read_text()[-3000:]}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"no commit after {timeout} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
