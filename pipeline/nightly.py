"""Nightly mode: process what arrived since the last successful night, under a dated output prefix.

Two ways to tell what is new:
  by="modified"   (default) objects whose LastModified lies in [watermark, cutoff); night D's cutoff is the end of
                  day D (UTC) or the storage clock minus settle_s, whichever is earlier. Output: OUTPUT/D/.
  by="partition"  the input holds date partitions INPUT/YYYY-MM-DD/; every partition after the watermark up to
                  night D is processed in date order, each into OUTPUT/YYYY-MM-DD/. A partition is taken as closed
                  once processed: files added to it later are not picked up.
The watermark lives in OUTPUT/_nightly/state.json, rewritten in one PUT (S3) or an atomic rename (local disk),
only after a night succeeded. A night that crashed is recorded as pending and is finished first (same window,
same prefix; the pipeline's resume skips what is done), so no file lands in two nights. Running a night that
already succeeded again selects nothing. `run_nightly` returns the night's exit code in its result (0 ok, 1 the
pipeline failed too many sources) and raises UsageError for bad options or state, RunFailed or OSError when
storage or the cluster is unreachable. The command line is `python -m jobs.nightly`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import posixpath
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from pyarrow import fs as pafs

from pipeline.options import RunFailed, RunOptions, RunSummary, UsageError
from pipeline.sources import AUDIO_EXTENSIONS, fs_path, make_filesystem, to_uri

log = logging.getLogger("pipeline")

__all__ = [
    "Arrival",
    "NightlyOptions",
    "NightlyResult",
    "night_cutoff",
    "run_nightly",
    "select_modified",
    "select_partitions",
    "summary_line",
]

STATE_DIR = "_nightly"
STATE_VERSION = 1
HISTORY = 60  # nights kept in state.json


@dataclass(frozen=True)
class NightlyOptions:
    input: str
    output: str
    night: date  # the day whose arrivals this run covers (default: yesterday, UTC)
    by: str = "modified"  # modified | partition
    settle_s: float = 300.0  # uploads younger than this (by the storage clock) wait for the next night
    run: RunOptions | None = None  # pipeline options; input, output and run_id are set per night
    since: date | None = None  # first night only: ignore arrivals (or partitions) before this day
    commit_every_s: float = 10.0  # passed to pipeline.run_job


@dataclass(frozen=True)
class Arrival:
    uri: str
    mtime: int  # whole seconds (S3 LastModified has one-second resolution)


@dataclass(frozen=True)
class NightlyResult:
    night: str
    exit_code: int
    selected: tuple[str, ...] = ()  # URIs handed to the pipeline (modified mode) or partitions processed
    summaries: tuple[RunSummary, ...] = ()
    state: dict | None = None


def night_cutoff(storage_now: float, settle_s: float, night: date) -> int:
    """End of the window for `night`: the end of that UTC day or the storage clock less the settle time."""
    return int(min(math.floor(storage_now - settle_s), _day_end(night)))


def select_modified(arrivals, watermark: int | None, cutoff: int) -> list[Arrival]:
    """Arrivals with watermark <= mtime < cutoff, in URI order; half-open, so no second is counted twice."""
    return sorted(
        (a for a in arrivals if (watermark is None or a.mtime >= watermark) and a.mtime < cutoff),
        key=lambda a: a.uri,
    )


def select_partitions(partitions, done_through: str | None, night: date) -> list[str]:
    """Partition names (YYYY-MM-DD) after `done_through` and not after `night`, in date order."""
    chosen = {
        name
        for name in partitions
        if (day := _parse_day(name)) is not None
        and day <= night
        and (done_through is None or name > done_through)
    }
    return sorted(chosen)


def run_nightly(opts: NightlyOptions, run_job=None) -> NightlyResult:
    """Run one night; `run_job` defaults to pipeline.run_job (tests pass their own)."""
    run_job = run_job or _pipeline_run_job
    base = opts.run or RunOptions(input=opts.input, output=opts.output)
    in_fs = make_filesystem(opts.input, base.s3_endpoint)
    out_fs = make_filesystem(opts.output, base.s3_endpoint)
    store = _StateStore(out_fs, fs_path(opts.output))
    state = store.load() or {"version": STATE_VERSION, "input": opts.input, "by": opts.by, "history": []}
    if "watermark" not in state and opts.since is not None:  # first night: skip the backlog before --since
        before = opts.since - timedelta(days=1)
        state["watermark"] = before.isoformat() if opts.by == "partition" else _day_end(before)
    if state.get("input") != opts.input or state.get("by") != opts.by:
        raise UsageError(
            f"{store.uri(out_fs)} belongs to --input {state.get('input')} --by {state.get('by')}; "
            "use another --output for a different archive or mode"
        )
    if opts.by == "partition":
        return _run_partitions(opts, base, in_fs, out_fs, store, state, run_job)
    return _run_modified(opts, base, in_fs, out_fs, store, state, run_job)


def summary_line(opts: NightlyOptions, result: NightlyResult) -> str:
    """One line for the operator: the night, how much was selected, its exit code and the new watermark."""
    mark = (result.state or {}).get("watermark")
    return (
        f"night {result.night}: {len(result.selected)} selected, exit {result.exit_code}; "
        f"watermark {_iso(mark) if opts.by == 'modified' else mark}; "
        f"results under {opts.output.rstrip('/')}/YYYY-MM-DD/"
    )


def _run_modified(opts, base, in_fs, out_fs, store, state, run_job) -> NightlyResult:
    night = opts.night.isoformat()
    cutoff = night_cutoff(store.storage_now(), opts.settle_s, opts.night)
    arrivals = list(_list_arrivals(in_fs, fs_path(opts.input), fs_path(opts.output)))
    summaries, selected = [], []
    pending = state.get("pending")
    if pending and pending["night"] != night:  # finish the crashed night first, with its own window
        log.info("finishing pending night %s first", pending["night"])
        done = _one_window(
            opts, base, out_fs, store, state, arrivals, pending["night"], pending["cutoff"], run_job
        )
        summaries += done[1]
        selected += done[2]
        if done[0] != 0:
            return NightlyResult(night, done[0], tuple(selected), tuple(summaries), state)
    code, runs, uris = _one_window(opts, base, out_fs, store, state, arrivals, night, cutoff, run_job)
    return NightlyResult(night, code, tuple(selected + uris), tuple(summaries + runs), state)


def _one_window(opts, base, out_fs, store, state, arrivals, night, cutoff, run_job):
    watermark = state.get("watermark")
    cutoff = max(cutoff, watermark or cutoff)  # never move the watermark back (a backfilled old night)
    chosen = select_modified(arrivals, watermark, cutoff)
    uris = [a.uri for a in chosen]
    log.info(
        "night %s: %d new of %d listed (window %s .. %s)",
        night,
        len(uris),
        len(arrivals),
        _iso(watermark),
        _iso(cutoff),
    )
    run_id = _run_id(night)
    summaries = []
    if uris:
        state["pending"] = {"night": night, "cutoff": cutoff}
        store.save(state)
        manifest = store.write_manifest(night, uris)
        run = base.replace(input=to_uri(out_fs, manifest), output=_join(opts.output, night), run_id=run_id)
        summary = _run_pipeline(run_job, run, opts.commit_every_s)
        summaries.append(summary)
        if summary.exit_code != 0:
            log.error(
                "night %s failed (exit %d): %d of %d sources failed",
                night,
                summary.exit_code,
                summary.files_failed,
                summary.files_ok + summary.files_failed,
            )
            return summary.exit_code, summaries, uris
    else:
        _push_empty_success(base, run_id)
    state.pop("pending", None)
    state["watermark"] = cutoff
    _record(state, night, run_id, len(uris), summaries)
    store.save(state)
    return 0, summaries, uris


def _run_partitions(opts, base, in_fs, out_fs, store, state, run_job) -> NightlyResult:
    night = opts.night.isoformat()
    root = fs_path(opts.input)
    children = in_fs.get_file_info(pafs.FileSelector(root, allow_not_found=False, recursive=False))
    names = [posixpath.basename(i.path) for i in children if i.type == pafs.FileType.Directory]
    todo = select_partitions(names, state.get("watermark"), opts.night)
    log.info("night %s: partitions to process: %s", night, ", ".join(todo) or "none")
    summaries = []
    for day in todo:
        run_id = _run_id(day)
        run = base.replace(input=_join(opts.input, day) + "/", output=_join(opts.output, day), run_id=run_id)
        summary = _run_pipeline(run_job, run, opts.commit_every_s)
        summaries.append(summary)
        if summary.exit_code != 0:
            log.error("partition %s failed (exit %d)", day, summary.exit_code)
            return NightlyResult(night, summary.exit_code, tuple(todo), tuple(summaries), state)
        state["watermark"] = day
        _record(state, day, run_id, summary.files_listed, [summary])
        store.save(state)
    if not todo:
        _push_empty_success(base, _run_id(night))
    return NightlyResult(night, 0, tuple(todo), tuple(summaries), state)


def _pipeline_run_job(run: RunOptions, commit_every_s: float = 10.0, observer=None) -> RunSummary:
    from pipeline import run_job  # Ray and the model load only when a night has work

    return run_job(run, commit_every_s=commit_every_s, observer=observer)


def _run_pipeline(run_job, run: RunOptions, commit_every_s: float) -> RunSummary:
    """One pipeline run with its run metrics pushed to the Pushgateway: start, then outcome."""
    metrics = _run_metrics(run)
    if metrics is not None:
        metrics.start()
    try:
        summary = run_job(run, commit_every_s=commit_every_s, observer=metrics)
    except RunFailed:
        if metrics is not None:
            metrics.finish(success=False)
        raise
    if metrics is not None:
        metrics.finish(success=summary.exit_code == 0, duration_s=summary.wall_s)
    return summary


def _run_metrics(run: RunOptions):
    if not run.pushgateway:
        return None
    from monitoring import RunMetrics

    return RunMetrics(
        run.job_name, run.run_id, run.model, run.prune.method, run.task, gateway=run.pushgateway, served=False
    )


def _list_arrivals(fs: pafs.FileSystem, root: str, output_root: str):
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True, recursive=True))
    if not infos:
        log.warning("nothing listed under %s: wrong --input?", to_uri(fs, root))
    for info in infos:
        name = posixpath.basename(info.path)
        if (
            info.type != pafs.FileType.File
            or name.startswith(".")
            or not name.lower().endswith(AUDIO_EXTENSIONS)
        ):
            continue
        if info.path.startswith(output_root.rstrip("/") + "/"):
            continue  # the output prefix inside the input prefix
        yield Arrival(to_uri(fs, info.path), int(math.floor(info.mtime.timestamp())))


class _StateStore:
    """OUTPUT/_nightly/: state.json, the storage clock marker, and each night's manifest."""

    def __init__(self, fs: pafs.FileSystem, output_root: str):
        self.fs, self.dir = fs, posixpath.join(output_root, STATE_DIR)
        self.path = posixpath.join(self.dir, "state.json")

    def uri(self, fs) -> str:
        return to_uri(fs, self.path)

    def load(self) -> dict | None:
        try:
            with self.fs.open_input_stream(self.path) as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        try:
            state = json.loads(raw)
        except ValueError:
            raise UsageError(f"{self.uri(self.fs)} is not JSON; fix or remove it by hand") from None
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise UsageError(f"{self.uri(self.fs)}: unknown state version {state.get('version')!r}")
        return state

    def save(self, state: dict) -> None:
        self._write(self.path, json.dumps(state, indent=1, sort_keys=True).encode())

    def storage_now(self) -> float:
        """The storage's own clock (the mtime of a marker just written), the clock LastModified values use."""
        marker = posixpath.join(self.dir, "clock")
        self._write(marker, b"")
        return self.fs.get_file_info(marker).mtime.timestamp()

    def write_manifest(self, night: str, uris) -> str:
        path = posixpath.join(self.dir, "manifests", f"{night}.jsonl")
        self._write(path, "".join(json.dumps({"audio": u}) + "\n" for u in uris).encode())
        return path

    def _write(self, path: str, data: bytes) -> None:
        if isinstance(self.fs, pafs.LocalFileSystem):  # write a temp file, then rename over the old one
            os.makedirs(posixpath.dirname(path), exist_ok=True)
            tmp = f"{path}.tmp-{os.getpid()}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            return
        with self.fs.open_output_stream(path) as f:  # S3: one PUT, visible whole or not at all
            f.write(data)


def _record(state: dict, night: str, run_id: str, files: int, summaries) -> None:
    entry = {"night": night, "run_id": run_id, "files": files, "finished_at": _iso(time.time())}
    if summaries:
        entry.update(
            files_ok=sum(s.files_ok for s in summaries), files_failed=sum(s.files_failed for s in summaries)
        )
    state["last_success"] = entry
    state["history"] = (state.get("history") or [])[-(HISTORY - 1) :] + [entry]


def _push_empty_success(run: RunOptions, run_id: str) -> None:
    """A night with nothing new is still a success: push it so the no-recent-success alert stays quiet."""
    if not run.pushgateway:
        return
    try:
        from monitoring import RunMetrics
    except ImportError:
        log.warning("monitoring package unavailable: nothing pushed")
        return
    metrics = RunMetrics(
        run.job_name, run_id, run.model, run.prune.method, run.task, gateway=run.pushgateway, served=False
    )
    metrics.finish(success=True, duration_s=0.0)


def _run_id(night: str) -> str:
    return f"nightly-{night}-{time.strftime('%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"


def _day_end(day: date) -> int:
    return int(datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC).timestamp())


def _join(uri: str, name: str) -> str:
    return uri.rstrip("/") + "/" + name


def _parse_day(name: str) -> date | None:
    try:
        day = date.fromisoformat(name)
    except ValueError:
        return None
    return day if day.isoformat() == name else None  # only YYYY-MM-DD, not week dates


def _iso(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
