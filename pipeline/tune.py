"""Choosing retain from data (`python -m jobs.tune`): a seeded sample of an archive's chunks runs unpruned and at
each retain through the pipeline's own stages, and the lowest retain whose interval meets a target wins: the paired
bootstrap interval of the score kept (pruned / unpruned score against reference answers) when the input manifest has
an answer per row, else that of the agreement with the unpruned answers.

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

__all__ = [
    "TuneOptions",
    "TuneResult",
    "format_table",
    "recommend",
    "recommended_retain",
    "run_tune",
    "score_rows",
]

log = logging.getLogger("pipeline")

RETAINS = (0.9, 0.7, 0.5, 0.4, 0.3, 0.2)
RULES = ("quality", "agreement")
# How far agreement sat below the score kept on the shipped validation (docs/shadow.md; tiny-synth, QA, test split
# seed 2, all families; results/shadow-tiny-synth/validation.json): (retain, agreement, score kept).
VALIDATION = ((0.7, 0.940, 0.997), (0.4, 0.873, 0.961), (0.2, 0.787, 0.902))


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
    # "quality" | "agreement"; None: quality when the sampled chunks have reference answers
    target_on: str | None = None

    def validate(self) -> TuneOptions:
        self.run.validate()
        if self.run.prune.method == "vanilla":
            raise UsageError("--method vanilla prunes nothing: tune a pruning method")
        if not self.retains or any(not 0.0 < r <= 1.0 for r in self.retains):
            raise UsageError(f"--retain values must be in (0, 1], got {list(self.retains)}")
        if self.sample < 1:
            raise UsageError(f"--sample must be >= 1, got {self.sample}")
        if not 0.0 < self.target <= 1.0:
            raise UsageError(f"--target must be in (0, 1], got {self.target}")
        if self.target_on not in (None, *RULES):
            raise UsageError(f"--target-on must be quality or agreement, got {self.target_on!r}")
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
    refs = _references(sources, opts.target_on)
    started = time.monotonic()
    window_s = min(run.window_s or 1e9, model_window_s(run.model, run.s3_endpoint))
    started_ray = _ensure_ray(run)
    try:
        rows = _run_graph(sources, opts, window_s, per_source)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    scored = score_rows(rows, refs)
    chunks = len({(r["id"], r["chunk_index"]) for r in rows if r["method"] == "vanilla"})
    rule, why = _rule(opts.target_on, refs, scored, chunks)
    table = tune_table(rows, opts.retains, opts.resamples, opts.seed)
    rec = recommend(table, opts.target, rule)
    if rule == "quality":
        rec["retain_on_agreement"] = recommend(table, opts.target, "agreement")["retain"]
    rec.update(
        model=run.model, method=run.prune.method, layer=run.prune.layer, budget=run.prune.budget, task=run.task,
        input=run.input, chunks=chunks, scored_chunks=scored, rule_reason=why, seed=opts.seed,
        wall_s=round(time.monotonic() - started, 1),
    )  # fmt: skip
    out_fs = make_filesystem(run.output, run.s3_endpoint)
    root = fs_path(run.output).rstrip("/")
    from pipeline.sink import CHUNK_SCHEMA

    write_table_atomic(out_fs, f"{root}/chunks.parquet", pa.Table.from_pylist(rows, schema=CHUNK_SCHEMA))
    write_json_atomic(
        out_fs,
        f"{root}/table.json",
        {"target": opts.target, "target_on": rule, "chunks": chunks, "rows": table},
    )
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


def _references(sources, target_on: str | None) -> dict[str, dict]:
    """The sampled sources' reference rows ({answer, choices} by id) when every one has an answer, else {}."""
    from quality.scoring import score

    missing = sum(s.answer is None for s in sources)
    if missing:
        if target_on == "quality":
            raise UsageError(
                f"--target-on quality needs reference answers: {missing} of {len(sources)} sampled sources have "
                "none (give a manifest with an 'answer' per row)"
            )
        return {}
    refs = {s.id: dict(answer=s.answer, choices=list(s.choices) if s.choices else None) for s in sources}
    for sid, ref in refs.items():
        try:
            score(ref, ref["answer"])  # an answer outside its choices, or empty once normalized
        except ValueError as e:
            raise UsageError(f"reference answer of {sid}: {e}") from None
    return refs


def score_rows(rows: list[dict], refs: dict[str, dict]) -> int:
    """Set each row's `score` against its source's reference answer (quality.scoring.score, the benchmark's
    per-sample score) where the chunk is the source's whole audio, else None; returns how many chunks were scored."""
    from quality.scoring import score

    scored = 0
    for r in rows:
        ref = refs.get(r["id"])
        whole = r["chunk_index"] == 0 and bool(r.get("last"))
        r["score"] = score(ref, r["text"]) if ref and whole and r["status"] == "ok" else None
        scored += r["method"] == "vanilla" and r["score"] is not None
    return scored


def _rule(target_on: str | None, refs: dict, scored: int, chunks: int) -> tuple[str, str]:
    """The rule the recommendation follows, and why (for the output)."""
    if target_on == "agreement":
        return "agreement", "--target-on agreement"
    if not refs:
        return "agreement", "no reference answers (a manifest with an 'answer' per row gives them)"
    if not scored or (target_on is None and scored < chunks):
        return "agreement", f"{scored} of {chunks} chunks are whole sources scorable against their answers"
    return "quality", f"reference answers for {scored} of {chunks} chunks"


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
    """Actor UDF: the model loaded once in one InferenceWorker, each chunk run per setting (vanilla, then each
    retain: the run's PruneOptions with that retain), every result row returned (method and retain say which)."""

    def __init__(self, opts, retains, schema: pa.Schema):
        from workers.inference import InferenceWorker

        self.worker = InferenceWorker(opts, schema)
        prune = opts.prune
        self.settings = [dataclasses.replace(prune, method="vanilla", retain=1.0)] + [
            dataclasses.replace(prune, retain=float(r)) for r in retains
        ]
        self.schema = schema

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        out = []
        for prune in self.settings:
            out.extend(self.worker.infer(rows, prune))
        return pa.Table.from_pylist(out, schema=self.schema)


def tune_table(rows: list[dict], retains, resamples: int = 2000, seed: int = 0) -> list[dict]:
    """Per retain: agreement with vanilla (mean, bootstrap 95% interval), the score kept where rows have a `score`
    (pruned / vanilla score on the same chunks, paired bootstrap 95% interval), mean prefill seconds, KV kept."""
    from quality.agreement import agreement, mean_interval
    from quality.metrics import score_kept

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
        pairs = [
            (r["score"], v["score"])
            for r, v in pruned
            if r.get("score") is not None and v.get("score") is not None
        ]
        kept, kept_lo, kept_hi = score_kept([p for p, _ in pairs], [v for _, v in pairs], resamples, seed)
        kv = sum(r["kv_bytes_kept"] or 0 for r, _ in pruned)
        kv_full = sum(v["kv_bytes_kept"] or 0 for _, v in pruned)
        table.append(
            dict(
                retain=float(retain), chunks=len(scores), agreement=mean, low=lo, high=hi, scored=len(pairs),
                score=_mean([p for p, _ in pairs]), vanilla_score=_mean([v for _, v in pairs]), score_kept=kept,
                kept_low=kept_lo, kept_high=kept_hi,
                prefill_s=_mean([r["prefill_s"] for r, _ in pruned]), vanilla_prefill_s=_mean(base_prefill),
                kv_kept=kv / kv_full if kv_full else None,
            )
        )  # fmt: skip
    return table


def recommend(table: list[dict], target: float, on: str = "agreement") -> dict:
    """The lowest retain whose interval's lower bound is >= target, on the score kept (`on="quality"`) or the
    agreement; retain 1.0 (nothing pruned) when none is."""
    low = "kept_low" if on == "quality" else "low"
    ok = [row for row in table if row.get(low) is not None and row[low] >= target]
    best = min(ok, key=lambda row: row["retain"]) if ok else {}
    keys = ("agreement", "low", "high", "score_kept", "kept_low", "kept_high")
    return dict(retain=best.get("retain", 1.0), met=bool(ok), target=target, target_on=on,
                **{k: best.get(k) for k in keys})  # fmt: skip


def format_table(result: TuneResult) -> str:
    """The table printed by jobs.tune, the rule its recommendation followed, and the recommendation."""

    def f(v, spec):
        return "-" if v is None else format(v, spec)

    quality = any(row.get("scored") for row in result.table)
    head = f"{'retain':>6}  {'chunks':>6}  {'agreement':>9}  {'95% interval':>13}"
    lines = [
        head + (f"  {'score kept':>10}  {'95% interval':>13}" if quality else "") + "  prefill s  KV kept"
    ]
    for row in result.table:
        line = f"{row['retain']:>6.2f}  {row['chunks']:>6d}  {f(row['agreement'], '.3f'):>9}  "
        line += f"{f(row['low'], '.3f') + '-' + f(row['high'], '.3f'):>13}"
        if quality:
            interval = f"{f(row['kept_low'], '.1%')}-{f(row['kept_high'], '.1%')}"
            line += f"  {f(row['score_kept'], '.1%'):>10}  {interval:>13}"
        lines.append(line + f"  {f(row['prefill_s'], '.4f'):>9}  {f(row['kv_kept'], '.0%')}")
    rec = result.recommendation
    base = _mean([row["vanilla_prefill_s"] for row in result.table if row["vanilla_prefill_s"] is not None])
    lines.append(f"unpruned prefill s: {f(base, '.4f')} per chunk; {result.chunks} chunks sampled")
    on = rec.get("target_on", "agreement")
    what = "score kept (pruned / unpruned score against the reference answers)" if on == "quality" else (
        "agreement with the unpruned answers"
    )  # fmt: skip
    lines.append(f"rule: --target-on {on}, the lowest retain whose 95% lower bound of {what} meets "
                 f"--target {rec['target']:g} ({rec.get('rule_reason') or on})")  # fmt: skip
    if on == "agreement":
        seen = " / ".join(f"{a:.3f} at {r:g} kept {k:.1%}" for r, a, k in VALIDATION)
        lines.append(
            "agreement is a conservative stand-in for the quality kept (an unpruned answer that changes counts as "
            f"lost, right or wrong): on tiny-synth QA (docs/shadow.md) agreement {seen} of the unpruned score"
        )
    if rec["met"] and on == "quality":
        lines.append(
            f"recommended retain: {rec['retain']:g} (score kept {rec['score_kept']:.1%}, 95% interval "
            f"{rec['kept_low']:.1%}-{rec['kept_high']:.1%} >= target {rec['target']:g}; agreement "
            f"{f(rec['agreement'], '.3f')})"
        )
    elif rec["met"]:
        lines.append(
            f"recommended retain: {rec['retain']:g} (agreement {rec['agreement']:.3f}, 95% interval "
            f"{rec['low']:.3f}-{rec['high']:.3f} >= target {rec['target']:g})"
        )
    else:
        lines.append(f"no retain met the target {rec['target']:g}: recommended retain 1.0 (nothing pruned)")
    if "retain_on_agreement" in rec:
        lines.append(f"(--target-on agreement would recommend retain {rec['retain_on_agreement']:g})")
    lines.append(
        f"written: {result.output.rstrip('/')}/recommendation.json (use: jobs.run --retain-from FILE)"
    )
    return "\n".join(lines)


def recommended_retain(path: str, model: str, method: str, budget: str = "fixed") -> float:
    """The retain of a jobs.tune recommendation.json, checked against the run's model, method and budget rule
    (UsageError; a file from before budgets names none and counts as fixed)."""
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
    for key, want in (("model", model), ("method", method), ("budget", budget)):
        got = rec.get(key, "fixed" if key == "budget" else None)
        if got is not None and str(got).rstrip("/") != str(want).rstrip("/"):
            raise UsageError(
                f"--retain-from {path} was tuned for {key} {got!r}, not --{key} {want!r}: "
                f"tune again or pass --{key} {got}"
            )
    return float(retain)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None
