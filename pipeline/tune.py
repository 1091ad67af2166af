"""Choosing retain from data (`python -m jobs.tune`): a seeded sample of an archive's chunks runs unpruned and at
each retain through the pipeline's own stages, and the lowest retain whose agreement interval meets a target wins.

The graph is the main job's: listed sources -> decode and chunk (CPU tasks, here keeping a seeded reservoir of
each source's chunks) -> one actor pool whose actors load the model once and run every chunk through an
InferenceWorker per setting (vanilla first) -> the driver, which compares each setting's answers with vanilla's
(quality.agreement) and writes OUTPUT/table.json, OUTPUT/recommendation.json and OUTPUT/chunks.parquet.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from dataclasses import dataclass

import pyarrow as pa

from pipeline.options import RunOptions, UsageError

__all__ = ["TuneOptions", "TuneResult", "format_table", "recommend", "recommended_retain", "run_tune"]

log = logging.getLogger("pipeline")

RETAINS = (0.9, 0.7, 0.5, 0.4, 0.3, 0.2)


@dataclass(frozen=True)
class TuneOptions:
    """run: the settings a later `jobs.run` would use (model, method, layer, task, workers, ...); its retain is
    ignored. sample: about how many chunks (one per source while the archive has that many sources)."""

    run: RunOptions
    retains: tuple[float, ...] = RETAINS
    sample: int = 200
    target: float = 0.98
    seed: int = 0
    resamples: int = 2000

    def validate(self) -> TuneOptions:
        self.run.validate()
        if self.run.method == "vanilla":
            raise UsageError("--method vanilla prunes nothing: tune a pruning method")
        if not self.retains or any(not 0.0 < r <= 1.0 for r in self.retains):
            raise UsageError(f"--retain values must be in (0, 1], got {list(self.retains)}")
        if self.sample < 1:
            raise UsageError(f"--sample must be >= 1, got {self.sample}")
        if not 0.0 < self.target <= 1.0:
            raise UsageError(f"--target must be in (0, 1], got {self.target}")
        return self


@dataclass(frozen=True)
class TuneResult:
    table: list[dict]  # one row per retain, highest first
    recommendation: dict  # what recommendation.json holds
    chunks: int  # chunks sampled (each run unpruned and at every retain)
    output: str


def run_tune(opts: TuneOptions) -> TuneResult:
    """Sample, run every setting, compare with vanilla, write the JSON files and chunks.parquet under the output."""
    from headrouter.engine.loading import model_window_s
    from pipeline.runner import _check_model, _ensure_ray
    from pipeline.sink import write_json_atomic, write_table_atomic
    from pipeline.sources import fs_path, list_sources, make_filesystem

    opts.validate()
    run = opts.run
    _check_model(run.model)
    sources = [s for s in list_sources(run.input, make_filesystem(run.input, run.s3_endpoint), run.question)]
    if not sources:
        raise UsageError(f"no audio sources under {run.input}")
    random.Random(opts.seed).shuffle(sources)
    per_source = max(1, math.ceil(opts.sample / len(sources)))
    sources = sources[: opts.sample]
    started = time.monotonic()
    window_s = min(run.window_s or 1e9, model_window_s(run.model, run.s3_endpoint))
    started_ray = _ensure_ray(run)
    try:
        rows = _run_graph(sources, opts, window_s, per_source)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    table = tune_table(rows, opts.retains, opts.resamples, opts.seed)
    rec = recommend(table, opts.target)
    chunks = len({(r["id"], r["chunk_index"]) for r in rows if r["method"] == "vanilla"})
    rec.update(
        model=run.model, method=run.method, layer=run.layer, task=run.task, input=run.input, chunks=chunks,
        seed=opts.seed, wall_s=round(time.monotonic() - started, 1),
    )  # fmt: skip
    out_fs = make_filesystem(run.output, run.s3_endpoint)
    root = fs_path(run.output).rstrip("/")
    from pipeline.sink import CHUNK_SCHEMA

    write_table_atomic(out_fs, f"{root}/chunks.parquet", pa.Table.from_pylist(rows, schema=CHUNK_SCHEMA))
    write_json_atomic(out_fs, f"{root}/table.json", {"target": opts.target, "chunks": chunks, "rows": table})
    write_json_atomic(out_fs, f"{root}/recommendation.json", rec)
    return TuneResult(table, rec, chunks, run.output)


def _run_graph(sources, opts: TuneOptions, window_s: float, per_source: int) -> list[dict]:
    import ray

    from pipeline.decode import DecodeLimits
    from pipeline.graph import source_items, worker_options
    from pipeline.sink import CHUNK_SCHEMA

    run = opts.run
    limits = DecodeLimits(
        max_duration_s=run.max_duration_s, timeout_s=run.decode_timeout_s, max_input_bytes=run.max_input_bytes
    )
    items = source_items(sources, run, "tune", "tune")
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 256)))
    ds = ds.map_batches(
        sample_chunks,
        batch_size=1,
        batch_format="pyarrow",
        fn_kwargs=dict(
            window_s=window_s,
            limits=limits,
            s3_endpoint=run.s3_endpoint,
            per_source=per_source,
            seed=opts.seed,
        ),
        num_cpus=1,
    )
    lo, hi = run.workers
    ds = ds.map_batches(
        SettingsWorker,
        fn_constructor_kwargs={
            "opts": worker_options(run.replace(shadow_fraction=0.0)),
            "retains": opts.retains,
            "schema": CHUNK_SCHEMA,
        },
        compute=ray.data.ActorPoolStrategy(min_size=lo, max_size=hi),
        batch_size=run.batch_size,
        batch_format="pyarrow",
        num_cpus=run.cpus_per_worker,
        num_gpus=run.gpus_per_worker or None,
    )
    rows, last = [], time.monotonic()
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        rows.extend(batch.to_pylist())
        if time.monotonic() - last >= run.progress_s:
            last = time.monotonic()
            log.info("progress: %d chunk results (%d settings per chunk)", len(rows), len(opts.retains) + 1)
    return sorted(rows, key=lambda r: (r["id"], r["chunk_index"], r["method"] != "vanilla", -r["retain"]))


def sample_chunks(batch: pa.Table, window_s, limits, s3_endpoint, per_source: int, seed: int):
    """CPU stage: decode and chunk each source as the main job does, keep a seeded reservoir of `per_source` of
    its decodable, non-silent chunks (one chunk's audio in memory beyond the reservoir)."""
    from pipeline.graph import _source_segments

    for src in batch.to_pylist():
        rng = random.Random(f"{seed}:{src['id']}")
        kept: list[pa.Table] = []
        seen = 0
        for table in _source_segments(src, window_s, limits, s3_endpoint):
            row = table.slice(0, 1).to_pylist()[0]
            if row["status"] != "ok" or row["silent"]:
                continue
            seen += 1
            if len(kept) < per_source:
                kept.append(table)
            elif (j := rng.randrange(seen)) < per_source:
                kept[j] = table
        yield from kept


class SettingsWorker:
    """Actor UDF: the model loaded once, each chunk run by an InferenceWorker per setting (vanilla, then each
    retain), every result row returned (method and retain say which setting)."""

    def __init__(self, opts, retains, schema: pa.Schema):
        from workers.inference import InferenceWorker

        vanilla = InferenceWorker(dataclasses.replace(opts, method="vanilla", retain=1.0), schema)
        self.workers = [vanilla] + [
            InferenceWorker(dataclasses.replace(opts, retain=float(r)), schema, lalm=vanilla.lalm)
            for r in retains
        ]
        self.schema = schema

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        out = []
        for worker in self.workers:
            out.extend(worker.infer(rows))
        return pa.Table.from_pylist(out, schema=self.schema)


def tune_table(rows: list[dict], retains, resamples: int = 2000, seed: int = 0) -> list[dict]:
    """Per retain: agreement with vanilla (mean, bootstrap 95% interval), mean prefill seconds, KV kept."""
    from quality.agreement import agreement, mean_interval

    vanilla = {
        (r["id"], r["chunk_index"]): r for r in rows if r["method"] == "vanilla" and r["status"] == "ok"
    }
    base_prefill = [v["prefill_s"] for v in vanilla.values()]
    table = []
    for retain in sorted(retains, reverse=True):
        pruned = [
            (r, vanilla[(r["id"], r["chunk_index"])])
            for r in rows
            if r["method"] != "vanilla"
            and r["retain"] == float(retain)
            and r["status"] == "ok"
            and (r["id"], r["chunk_index"]) in vanilla
        ]
        scores = [agreement(str(r["task"]), r["text"], v["text"]) for r, v in pruned]
        mean, lo, hi = mean_interval(scores, resamples, seed)
        kv = sum(r["kv_bytes_kept"] or 0 for r, _ in pruned)
        kv_full = sum(v["kv_bytes_kept"] or 0 for _, v in pruned)
        table.append(
            dict(
                retain=float(retain), chunks=len(scores), agreement=mean, low=lo, high=hi,
                prefill_s=_mean([r["prefill_s"] for r, _ in pruned]), vanilla_prefill_s=_mean(base_prefill),
                kv_kept=kv / kv_full if kv_full else None,
            )
        )  # fmt: skip
    return table


def recommend(table: list[dict], target: float) -> dict:
    """The lowest retain whose interval's lower bound is >= target; retain 1.0 (nothing pruned) when none is."""
    ok = [row for row in table if row["low"] is not None and row["low"] >= target]
    if not ok:
        return dict(retain=1.0, met=False, target=target, agreement=None, low=None, high=None)
    best = min(ok, key=lambda row: row["retain"])
    return dict(retain=best["retain"], met=True, target=target, agreement=best["agreement"], low=best["low"],
                high=best["high"])  # fmt: skip


def format_table(result: TuneResult) -> str:
    """The table printed by jobs.tune, and its recommendation."""

    def f(v, spec):
        return "-" if v is None else format(v, spec)

    lines = [
        f"{'retain':>6}  {'chunks':>6}  {'agreement':>9}  {'95% interval':>13}  {'prefill s':>9}  KV kept"
    ]
    for row in result.table:
        interval = f"{f(row['low'], '.3f')}-{f(row['high'], '.3f')}"
        lines.append(
            f"{row['retain']:>6.2f}  {row['chunks']:>6d}  {f(row['agreement'], '.3f'):>9}  {interval:>13}  "
            f"{f(row['prefill_s'], '.4f'):>9}  {f(row['kv_kept'], '.0%')}"
        )
    rec = result.recommendation
    base = _mean([row["vanilla_prefill_s"] for row in result.table if row["vanilla_prefill_s"] is not None])
    lines.append(f"unpruned prefill s: {f(base, '.4f')} per chunk; {result.chunks} chunks sampled")
    if rec["met"]:
        lines.append(
            f"recommended retain: {rec['retain']:g} (agreement {rec['agreement']:.3f}, 95% interval "
            f"{rec['low']:.3f}-{rec['high']:.3f} >= target {rec['target']:g})"
        )
    else:
        lines.append(f"no retain met the target {rec['target']:g}: recommended retain 1.0 (nothing pruned)")
    lines.append(
        f"written: {result.output.rstrip('/')}/recommendation.json (use: jobs.run --retain-from FILE)"
    )
    return "\n".join(lines)


def recommended_retain(path: str, model: str, method: str) -> float:
    """The retain of a jobs.tune recommendation.json, checked against the run's model and method (UsageError)."""
    try:
        with open(path, encoding="utf-8") as f:
            rec = json.load(f)
    except OSError as e:
        raise UsageError(f"--retain-from {path}: cannot read it ({e.strerror or e})") from None
    except ValueError as e:
        raise UsageError(f"--retain-from {path}: not JSON ({e})") from None
    retain = rec.get("retain") if isinstance(rec, dict) else None
    if isinstance(retain, bool) or not isinstance(retain, int | float) or not 0.0 < retain <= 1.0:
        raise UsageError(
            f"--retain-from {path}: no retain in (0, 1] (is it jobs.tune's recommendation.json?)"
        )
    for key, want in (("model", model), ("method", method)):
        got = rec.get(key)
        if got is not None and str(got).rstrip("/") != str(want).rstrip("/"):
            raise UsageError(
                f"--retain-from {path} was tuned for {key} {got!r}, not --{key} {want!r}: "
                f"tune again or pass --{key} {got}"
            )
    return float(retain)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None
