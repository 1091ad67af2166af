"""One batch run: list, skip what earlier runs committed, stream the Ray graph into the sink, summarize."""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections import Counter
from datetime import UTC, datetime

from pipeline.graph import build_dataset, source_items
from pipeline.options import RunFailed, RunOptions, RunSummary, UsageError
from pipeline.resume import completed_ids
from pipeline.sink import ResultSink, write_json_atomic
from pipeline.sources import fs_path, list_sources, make_filesystem

log = logging.getLogger("pipeline")


# Never shipped to a cluster (beyond what .gitignore already keeps out).
SHIP_EXCLUDES = [".venv/", ".git/", "out/", "data/", ".cache/", "*.parquet"]


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def run_job(opts: RunOptions, commit_every_s: float = 10.0, on_start=None, observer=None) -> RunSummary:
    """Run the pipeline once; returns the summary (exit_code 0 ok, 1 too many failed sources).

    Raises UsageError for mistakes in `opts` and RunFailed when the run cannot proceed. `on_start(run_id)` is
    called once the work is listed; `observer.observe(row)` sees every chunk row in the driver (run metrics).
    """
    opts.validate()
    started = time.monotonic()
    run_id = opts.run_id or new_run_id()
    attempt_id = uuid.uuid4().hex[:12]
    in_fs = make_filesystem(opts.input, opts.s3_endpoint)
    out_fs = make_filesystem(opts.output, opts.s3_endpoint)
    root = fs_path(opts.output)
    run_json = f"{root}/runs/{run_id}.json"
    _check_model(opts.model)
    sources = list(list_sources(opts.input, in_fs, opts.question))  # user mistakes surface before any write
    try:
        write_json_atomic(out_fs, run_json, {"run_id": run_id, "status": "running", "options": _public(opts)})
        done = completed_ids(out_fs, root, retry_errors=opts.retry_errors)
    except OSError as e:
        raise RunFailed(f"cannot write to output {opts.output}: {_one_line(e)}") from None
    todo = [s for s in sources if s.id not in done]
    log.info(
        "run %s: %d sources listed, %d already done, %d to process",
        run_id,
        len(sources),
        len(sources) - len(todo),
        len(todo),
    )
    if on_start is not None:
        on_start(run_id)
    sink = ResultSink(out_fs, root, run_id, attempt_id, commit_every_s=commit_every_s)
    missing: list[str] = []
    if todo:
        from headrouter.engine.loading import model_window_s  # no weights loaded; imports torch

        window_s = min(opts.window_s or 1e9, model_window_s(opts.model, opts.s3_endpoint))
        started_ray = _ensure_ray(opts)
        try:
            ds = build_dataset(source_items(todo, opts, run_id, attempt_id), opts, window_s)
            _stream(ds, sink, len(todo), opts.progress_s, started, observer)
            missing = sink.close()
        except (UsageError, RunFailed):
            raise
        except Exception as e:
            try:
                sink.close()  # keep what finished: a rerun resumes from it
            except Exception as late:  # the output is failing too: a rerun redoes what is uncommitted
                log.error("could not commit the last results: %s", _one_line(late))
            raise RunFailed(f"run {run_id} stopped: {type(e).__name__}: {_one_line(e)}") from None
        finally:
            if started_ray:
                import ray

                ray.shutdown()
    summary = _summary(
        run_id,
        opts,
        sink.committed,
        len(sources),
        len(sources) - len(todo),
        missing,
        time.monotonic() - started,
        sink.shadow_agreements,
    )
    write_json_atomic(out_fs, run_json, dict(summary.to_dict(), status="complete", options=_public(opts)))
    return summary


def _check_model(model: str) -> None:
    """Fail fast on a model name no actor could load (S3 models are checked by the actors: no download here)."""
    if model.startswith("s3://"):
        return
    from headrouter.engine.loading import resolve_model

    try:
        resolve_model(model)
    except FileNotFoundError as e:
        raise UsageError(f"--model: {_one_line(e)}") from None


def _stream(ds, sink: ResultSink, total: int, progress_s: float, started: float, observer) -> None:
    last = time.monotonic()
    chunks = 0
    audio_s = 0.0
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        rows = batch.to_pylist()
        sink.add(rows)
        if observer is not None:
            for row in rows:
                observer.observe(row)
        chunks += len(rows)
        audio_s += sum((r["end_s"] or 0.0) - (r["start_s"] or 0.0) for r in rows)
        if time.monotonic() - last >= progress_s:
            last = time.monotonic()
            wall = last - started
            log.info(
                "progress: %d/%d sources committed, %d chunks, %.2f h audio, %.1fx real time",
                len(sink.committed),
                total,
                chunks,
                audio_s / 3600,
                audio_s / wall if wall else 0.0,
            )


def _ensure_ray(opts: RunOptions) -> bool:
    """Connect to (or start) Ray unless this process already did; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict = {"logging_level": logging.WARNING, "log_to_driver": True}
    address = opts.address or os.environ.get("RAY_ADDRESS")
    if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        pass  # a `ray job submit` driver: the job's runtime env (working dir) already ships the code
    elif address:  # joining a cluster from outside a job: ship this checkout's code to its workers
        kwargs.update(address=address, runtime_env={"working_dir": _repo_root(), "excludes": SHIP_EXCLUDES})
    else:  # embedded local cluster: no dashboard, nothing listening beyond loopback
        # address="local": never auto-join a `ray start` cluster that happens to run on this machine
        kwargs.update(address="local", include_dashboard=False, _node_ip_address="127.0.0.1")
        kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": _repo_root()}}
    try:
        ray.init(**kwargs)
    except Exception as e:
        raise RunFailed(
            f"cannot start or reach Ray{' at ' + address if address else ''}: {_one_line(e)}"
        ) from None
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False  # the driver logs its own progress lines
    return True


def _summary(run_id, opts, rows, listed, skipped, missing, wall_s, shadow=()) -> RunSummary:
    from quality.agreement import mean_interval

    ok = [r for r in rows if r["status"] == "ok"]
    failed = [r for r in rows if r["status"] != "ok"]
    routed = [r for r in ok if r.get("alpha_semantic") is not None]

    def mean(key):
        return sum(r[key] for r in routed) / len(routed) if routed else None

    errors = Counter(r["error_kind"] or "error" for r in failed)
    if missing:
        errors["incomplete"] += len(missing)
    n_failed = len(failed) + len(missing)
    done = len(ok) + n_failed
    frac = n_failed / done if done else 0.0
    return RunSummary(
        run_id=run_id,
        output=opts.output,
        files_listed=listed,
        files_skipped=skipped,
        files_ok=len(ok),
        files_failed=n_failed,
        chunks=sum(int(r["num_chunks"]) for r in rows),
        audio_s=sum(float(r["duration_s"] or 0.0) for r in rows),
        wall_s=wall_s,
        audio_tokens=sum(int(r["audio_tokens"] or 0) for r in ok),
        kept_tokens=sum(int(r["kept_tokens"] or 0) for r in ok),
        alpha_semantic=mean("alpha_semantic"),
        alpha_uniform=mean("alpha_uniform"),
        alpha_acoustic=mean("alpha_acoustic"),
        errors=dict(errors),
        shadow_chunks=len(shadow),
        shadow_agreement=mean_interval(shadow) if shadow else None,
        prepare_s=sum(float(r.get("prepare_s") or 0.0) for r in ok),
        prefill_s=sum(float(r.get("prefill_s") or 0.0) for r in ok),
        decode_s=sum(float(r.get("decode_s") or 0.0) for r in ok),
        exit_code=1 if frac > opts.max_error_fraction else 0,
    )


def _public(opts: RunOptions) -> dict:
    """Options as stored in runs/<run_id>.json (no credentials ever reach RunOptions; user:pass@ is dropped)."""
    import dataclasses

    d = dataclasses.asdict(opts)
    if d.get("s3_endpoint") and "@" in d["s3_endpoint"]:
        scheme, _, rest = d["s3_endpoint"].rpartition("://")
        d["s3_endpoint"] = (scheme + "://" if scheme else "") + rest.split("@", 1)[1]
    return d


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300]
