"""Nightly mode: window selection, the watermark in state.json, crash recovery, and two nights on S3."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, date, datetime, timedelta

import pytest

from jobs import nightly
from pipeline.nightly import (
    Arrival,
    NightlyOptions,
    night_cutoff,
    run_nightly,
    select_modified,
    select_partitions,
)
from pipeline.options import RunFailed, RunOptions, RunSummary, UsageError
from tests.fixtures.audio import REPO, bursts, write_wav

DAY1 = date(2026, 11, 26)
DAY2 = date(2026, 11, 27)
DAY3 = date(2026, 11, 28)


def _ts(day: date, hour: int = 12) -> int:
    return int(datetime(day.year, day.month, day.day, hour, tzinfo=UTC).timestamp())


# --- pure selection -------------------------------------------------------------------------------------------


def test_cutoff_is_end_of_night_or_storage_clock_less_settle():
    now = _ts(DAY3, 2)  # 02:00 on the 28th
    assert night_cutoff(now, 300, DAY2) == _ts(DAY3, 0)  # the 27th is over: its end
    assert night_cutoff(now, 300, DAY3) == now - 300  # the 28th is not: the clock less the settle time
    assert night_cutoff(now + 0.9, 0, DAY3) == now  # whole seconds, rounded down


def test_window_is_half_open_and_sorted():
    arrivals = [Arrival("s3://b/c.wav", 100), Arrival("s3://b/a.wav", 99), Arrival("s3://b/b.wav", 200)]
    assert [a.uri for a in select_modified(arrivals, None, 200)] == ["s3://b/a.wav", "s3://b/c.wav"]
    assert [a.uri for a in select_modified(arrivals, 100, 201)] == ["s3://b/b.wav", "s3://b/c.wav"]
    # consecutive windows partition the timeline: every arrival in exactly one
    firsts = select_modified(arrivals, None, 100) + select_modified(arrivals, 100, 200)
    seconds = select_modified(arrivals, 200, 10**10)
    assert sorted(a.uri for a in firsts + seconds) == sorted(a.uri for a in arrivals)


def test_partitions_after_watermark_up_to_night_only_real_dates():
    names = ["2026-11-25", "2026-11-26", "2026-11-27", "2026-11-29", "2026-W48-1", "misc", "2026-13-01"]
    assert select_partitions(names, None, DAY2) == ["2026-11-25", "2026-11-26", "2026-11-27"]
    assert select_partitions(names, "2026-11-26", DAY3) == ["2026-11-27"]
    assert select_partitions(names, "2026-11-27", DAY3) == []


# --- run_nightly on a local archive with a recording pipeline -------------------------------------------------


class FakePipeline:
    """Stands in for pipeline.run_job: records each run's sources (read back from its input) and outcome."""

    def __init__(self):
        self.runs: list[tuple[RunOptions, list[str]]] = []
        self.fail_next: Exception | int | None = None

    def __call__(self, run: RunOptions, commit_every_s: float = 10.0, observer=None) -> RunSummary:
        if run.input.endswith(".jsonl"):
            with open(run.input) as f:
                sources = [json.loads(line)["audio"] for line in f]
        else:
            sources = sorted(os.path.join(run.input, n) for n in os.listdir(run.input))
        self.runs.append((run, sources))
        fail, self.fail_next = self.fail_next, None
        if isinstance(fail, Exception):
            raise fail
        failed = len(sources) if fail else 0
        return RunSummary(
            run.run_id, run.output, files_listed=len(sources), files_ok=len(sources) - failed,
            files_failed=failed, exit_code=fail or 0,
        )  # fmt: skip


def _add(folder, name: str, day: date, hour: int = 12) -> str:
    path = os.path.join(folder, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"RIFF")
    os.utime(path, (_ts(day, hour), _ts(day, hour)))
    return path


def _opts(archive, out, night, **kw) -> NightlyOptions:
    return NightlyOptions(str(archive), str(out), night, settle_s=0, **kw)


def _state(out) -> dict:
    with open(os.path.join(out, "_nightly", "state.json")) as f:
        return json.load(f)


def test_each_night_takes_only_new_arrivals_and_a_rerun_is_a_no_op(tmp_path):
    archive, out, pipe = tmp_path / "archive", tmp_path / "out", FakePipeline()
    a = _add(archive, "a.wav", DAY1)
    b = _add(archive, "sub/b.flac", DAY1, 23)
    _add(archive, "notes.txt", DAY1)  # not audio
    _add(archive, ".hidden.wav", DAY1)

    first = run_nightly(_opts(archive, out, DAY1), run_job=pipe)
    assert first.exit_code == 0 and sorted(first.selected) == sorted([a, b])
    run, sources = pipe.runs[-1]
    assert sorted(sources) == sorted([a, b])
    assert run.output == f"{out}/2026-11-26" and run.run_id.startswith("nightly-2026-11-26-")
    assert _state(out)["watermark"] == _ts(DAY2, 0)

    c = _add(archive, "c.mp3", DAY2, 9)
    _add(archive, "d.wav", DAY3, 1)  # arrives after night 2 ended: belongs to night 3
    second = run_nightly(_opts(archive, out, DAY2), run_job=pipe)
    assert second.selected == (c,) and pipe.runs[-1][1] == [c]
    assert pipe.runs[-1][0].output == f"{out}/2026-11-27"

    calls = len(pipe.runs)
    again = run_nightly(_opts(archive, out, DAY2), run_job=pipe)
    assert again.exit_code == 0 and again.selected == () and len(pipe.runs) == calls
    old = run_nightly(_opts(archive, out, DAY1), run_job=pipe)  # a backfill of an older night: nothing either
    assert old.selected == () and _state(out)["watermark"] == _ts(DAY3, 0)
    assert [h["night"] for h in _state(out)["history"]] == [
        "2026-11-26",
        "2026-11-27",
        "2026-11-27",
        "2026-11-26",
    ]


def test_failed_night_keeps_watermark_and_a_crashed_night_is_finished_in_its_own_prefix(tmp_path):
    archive, out, pipe = tmp_path / "archive", tmp_path / "out", FakePipeline()
    _add(archive, "a.wav", DAY1)
    run_nightly(_opts(archive, out, DAY1), run_job=pipe)
    mark = _state(out)["watermark"]

    b = _add(archive, "b.wav", DAY2)
    pipe.fail_next = 1  # too many sources failed
    failed = run_nightly(_opts(archive, out, DAY2), run_job=pipe)
    assert failed.exit_code == 1 and _state(out)["watermark"] == mark
    assert _state(out)["pending"] == {"night": "2026-11-27", "cutoff": _ts(DAY3, 0)}

    pipe.fail_next = RunFailed("bucket unreachable")  # the retry crashes outright
    with pytest.raises(RunFailed):
        run_nightly(_opts(archive, out, DAY2), run_job=pipe)
    assert _state(out)["watermark"] == mark

    c = _add(archive, "c.wav", DAY3)
    third = run_nightly(_opts(archive, out, DAY3), run_job=pipe)  # the next night finishes night 2 first
    assert third.exit_code == 0
    (run2, src2), (run3, src3) = pipe.runs[-2:]
    assert (run2.output, src2) == (f"{out}/2026-11-27", [b])
    assert (run3.output, src3) == (f"{out}/2026-11-28", [c])
    assert "pending" not in _state(out) and _state(out)["watermark"] == _ts(DAY3 + timedelta(days=1), 0)


def test_since_skips_the_backlog_and_state_belongs_to_one_archive(tmp_path):
    archive, out, pipe = tmp_path / "archive", tmp_path / "out", FakePipeline()
    _add(archive, "old.wav", DAY1)
    new = _add(archive, "new.wav", DAY2)
    res = run_nightly(_opts(archive, out, DAY2, since=DAY2), run_job=pipe)
    assert res.selected == (new,)
    with pytest.raises(UsageError, match="belongs to --input"):
        run_nightly(_opts(tmp_path / "other", out, DAY3), run_job=pipe)
    with open(os.path.join(out, "_nightly", "state.json"), "w") as f:
        f.write("{not json")
    assert nightly.main(["--input", str(archive), "--output", str(out), "--date", "2026-11-28"]) == 2


def test_partition_mode_processes_each_closed_day_once_in_order(tmp_path):
    archive, out, pipe = tmp_path / "archive", tmp_path / "out", FakePipeline()
    for day in (DAY1, DAY2, DAY3):
        _add(archive, f"{day.isoformat()}/x.wav", day)
    _add(archive, "misc/y.wav", DAY1)

    res = run_nightly(_opts(archive, out, DAY2, by="partition"), run_job=pipe)
    assert res.selected == ("2026-11-26", "2026-11-27")
    assert [r.output for r, _ in pipe.runs] == [f"{out}/2026-11-26", f"{out}/2026-11-27"]
    assert [r.input for r, _ in pipe.runs] == [f"{archive}/2026-11-26/", f"{archive}/2026-11-27/"]
    assert run_nightly(_opts(archive, out, DAY2, by="partition"), run_job=pipe).selected == ()

    pipe.fail_next = 1
    assert run_nightly(_opts(archive, out, DAY3, by="partition"), run_job=pipe).exit_code == 1
    assert _state(out)["watermark"] == "2026-11-27"
    assert run_nightly(_opts(archive, out, DAY3, by="partition"), run_job=pipe).selected == ("2026-11-28",)
    assert _state(out)["watermark"] == "2026-11-28"


def _pushed(gateway: str, job: str) -> dict[str, set[str]]:
    """metric name -> run_ids pushed under `job` (Pushgateway's own /metrics)."""
    with urllib.request.urlopen(f"{gateway}/metrics", timeout=10) as r:
        text = r.read().decode()
    found: dict[str, set[str]] = {}
    for name, labels in re.findall(r"^(headrouter_run_\w+)\{([^}]*)\}", text, re.M):
        if f'job="{job}"' in labels:
            found.setdefault(name, set()).add(re.search(r'run_id="([^"]+)"', labels).group(1))
    return found


def test_nights_push_outcomes_and_only_successes_set_last_success(tmp_path, prometheus_stack):
    archive, out, pipe = tmp_path / "archive", tmp_path / "out", FakePipeline()
    job = f"test-nightly-{os.getpid()}-{tmp_path.name}"
    run = RunOptions(str(archive), str(out), pushgateway=prometheus_stack.pushgateway, job_name=job)
    _add(archive, "a.wav", DAY1)
    pipe.fail_next = 1
    failed = run_nightly(_opts(archive, out, DAY1, run=run), run_job=pipe)
    empty = run_nightly(_opts(archive, out, DAY1, run=run), run_job=FakePipeline())  # retries, now ok
    assert failed.exit_code == 1 and empty.exit_code == 0
    quiet = run_nightly(_opts(archive, out, DAY2, run=run), run_job=pipe)  # nothing new: still a success
    assert quiet.selected == ()
    pushed = _pushed(prometheus_stack.pushgateway, job)
    failed_id, ok_id = failed.summaries[0].run_id, empty.summaries[0].run_id
    assert failed_id in pushed["headrouter_run_success"] and ok_id in pushed["headrouter_run_success"]
    last = pushed["headrouter_run_last_success_timestamp_seconds"]
    assert failed_id not in last and ok_id in last and len(last) == 2  # the quiet night pushed its own


# --- two nights over a growing archive on the S3 server, the real pipeline and a model fetched from S3 ---------


def _night(s3_server, stack, cache, night: date) -> tuple[int, str]:
    """`python -m jobs.nightly` as the Kubernetes job runs it (own embedded Ray, model from S3)."""
    env = dict(
        os.environ,
        AWS_ENDPOINT_URL=s3_server.endpoint,
        HEADROUTER_CACHE=str(cache),
        RAY_USAGE_STATS_ENABLED="0",
    )
    env.pop("RAY_ADDRESS", None)
    env["PATH"] = f"{os.path.dirname(sys.executable)}{os.pathsep}{env['PATH']}"
    argv = [
        sys.executable, "-m", "jobs.nightly", "--input", "s3://nightly-archive/incoming/",
        "--output", "s3://nightly-results/nightly/", "--date", night.isoformat(), "--settle-seconds", "0",
        "--model", "s3://nightly-models/tiny/", "--workers", "1", "--cpus-per-worker", "0.25", "--batch-size", "2",
        "--s3-endpoint", s3_server.endpoint, "--pushgateway", stack.pushgateway,
    ]  # fmt: skip
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


def _upload_wavs(s3_server, tmp_path, names):
    client = s3_server.client()
    for n, name in enumerate(names):
        path = write_wav(tmp_path / name, bursts(1.0 + 0.25 * n, seed=n)[0])
        client.upload_file(str(path), "nightly-archive", f"incoming/{name}")
    time.sleep(1.1)  # LastModified has one-second resolution: let the storage clock pass these uploads


@pytest.mark.slow
def test_two_nights_on_s3_take_only_new_files_and_rerunning_a_night_is_a_no_op(
    s3_server, prometheus_stack, tmp_path
):
    from headrouter.engine.tiny import tiny_path
    from pipeline import read_results
    from pipeline.resume import read_parts
    from pipeline.sink import FILE_SCHEMA
    from pipeline.sources import make_filesystem

    for bucket in ("nightly-archive", "nightly-results", "nightly-models"):
        s3_server.create_bucket(bucket)
    s3_server.upload_dir(tiny_path("tiny-random"), "nightly-models", "tiny")
    cache = tmp_path / "node-cache"
    today = datetime.now(UTC).date()
    out = "s3://nightly-results/nightly"

    _upload_wavs(s3_server, tmp_path, ["a.wav", "b.wav"])
    code, log = _night(s3_server, prometheus_stack, cache, today)
    assert code == 0, log[-3000:]
    night1 = read_results(f"{out}/{today}", s3_server.endpoint).files
    assert sorted(night1.column("source").to_pylist()) == [
        "s3://nightly-archive/incoming/a.wav",
        "s3://nightly-archive/incoming/b.wav",
    ]
    assert set(night1.column("status").to_pylist()) == {"ok"}
    fetched = sorted(p for p in cache.rglob("*") if p.is_file())
    assert any(p.name == "model.safetensors" for p in fetched), (
        "the model was not fetched into the node cache"
    )
    stamps = {p: p.stat().st_mtime_ns for p in fetched}

    _upload_wavs(s3_server, tmp_path, ["c.wav"])
    tomorrow = today + timedelta(days=1)
    code, log = _night(s3_server, prometheus_stack, cache, tomorrow)
    assert code == 0, log[-3000:]
    night2 = read_results(f"{out}/{tomorrow}", s3_server.endpoint).files
    assert night2.column("source").to_pylist() == ["s3://nightly-archive/incoming/c.wav"]
    assert {p: p.stat().st_mtime_ns for p in fetched} == stamps, "the cached model was fetched again"

    fs = make_filesystem(out, s3_server.endpoint)
    state_before = fs.open_input_stream("nightly-results/nightly/_nightly/state.json").read()
    code, log = _night(s3_server, prometheus_stack, cache, tomorrow)  # the same night again
    assert code == 0 and "0 selected" in log, log[-3000:]
    raw = [
        read_parts(fs, f"nightly-results/nightly/{day}/files", FILE_SCHEMA).column("source").to_pylist()
        for day in (today, tomorrow)
    ]
    assert sorted(raw[0] + raw[1]) == [
        f"s3://nightly-archive/incoming/{n}" for n in ("a.wav", "b.wav", "c.wav")
    ]
    state = json.loads(fs.open_input_stream("nightly-results/nightly/_nightly/state.json").read())
    # night 2 is not over yet, so the rerun moved its cutoff on (to the storage clock), never back
    assert state["watermark"] >= json.loads(state_before)["watermark"] and "pending" not in state
    assert [h["files"] for h in state["history"]] == [2, 1, 0]

    # every night, the no-op included, pushed a last-success timestamp for the nightly job
    with urllib.request.urlopen(f"{prometheus_stack.pushgateway}/metrics", timeout=10) as r:
        pushed = r.read().decode()
    successes = re.findall(
        r'headrouter_run_last_success_timestamp_seconds\{[^}]*job="headrouter-nightly"[^}]*\}', pushed
    )
    assert len({re.search(r'run_id="([^"]+)"', s).group(1) for s in successes}) == 3, successes
