"""The Ray Data graph: listed sources -> decode and chunk (CPU tasks) -> inference (actor pool) -> driver sink.

Each stage streams: a decode task yields one chunk at a time, the actor pool takes batches of chunks, and the
driver pulls finished rows with `iter_batches` and commits them (pipeline.sink). Nothing is materialized whole.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from pipeline.chunking import chunk_stream
from pipeline.decode import SAMPLE_RATE, DecodeError, DecodeLimits, decode_stream
from pipeline.options import RunOptions
from pipeline.sources import Source, fs_path, source_filesystem

# Rows between the decode stage and the inference actors: one per chunk, audio as float32 bytes.
SEGMENT_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("attempt_id", pa.string()),
        ("id", pa.string()),
        ("source", pa.string()),
        ("task", pa.string()),
        ("question", pa.string()),
        ("choices", pa.string()),  # JSON list or null
        ("chunk_index", pa.int32()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("last", pa.bool_()),
        ("silent", pa.bool_()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("audio", pa.large_binary()),  # [n] float32 little-endian, 16 kHz mono
    ]
)

SILENCE_PEAK = 1e-4  # about -80 dBFS: digital silence, not a quiet room


def decode_and_chunk(
    batch: pa.Table, window_s: float, limits: DecodeLimits, s3_endpoint: str | None
) -> Iterator[pa.Table]:
    """CPU stage: for each listed source, yield its chunks one at a time; a bad source yields one error row."""
    for src in batch.to_pylist():
        yield from _source_segments(src, window_s, limits, s3_endpoint)


def _source_segments(src: dict, window_s: float, limits: DecodeLimits, s3_endpoint: str | None):
    base = {k: src.get(k) for k in ("run_id", "attempt_id", "id", "task", "question", "choices")}
    base["source"] = src["uri"]
    emitted, position = 0, 0.0
    try:
        if src.get("error"):
            raise DecodeError(*src["error"].split(": ", 1))
        uri = src["uri"]
        fs = source_filesystem(uri.startswith("s3://"), s3_endpoint)
        for chunk in chunk_stream(decode_stream(fs, fs_path(uri), limits), window_s):
            row = dict(
                base,
                chunk_index=chunk.index,
                start_s=chunk.start / SAMPLE_RATE,
                end_s=chunk.end / SAMPLE_RATE,
            )
            row.update(last=chunk.last, status="ok", error="", audio=chunk.audio.astype("<f4").tobytes())
            row["silent"] = bool(np.abs(chunk.audio).max(initial=0.0) < SILENCE_PEAK)
            emitted, position = emitted + 1, row["end_s"]
            yield pa.Table.from_pylist([row], schema=SEGMENT_SCHEMA)
    except Exception as e:  # every failure of one source becomes its final (error) row; never the batch's
        message = str(e) if isinstance(e, DecodeError) else f"decode_error: {type(e).__name__}: {e}"
        row = dict(base, chunk_index=emitted, start_s=position, end_s=position, last=True, silent=False)
        row.update(status="error", error=" ".join(message.split())[:300], audio=b"")
        yield pa.Table.from_pylist([row], schema=SEGMENT_SCHEMA)


def source_items(sources: list[Source], opts: RunOptions, run_id: str, attempt_id: str) -> list[dict]:
    return [
        {
            "run_id": run_id,
            "attempt_id": attempt_id,
            "id": s.id,
            "uri": s.uri,
            "task": opts.task,
            "question": s.question if s.question is not None else opts.question,
            "choices": json.dumps(list(s.choices)) if s.choices else None,
            "error": s.error,
        }
        for s in sources
    ]


def build_dataset(items: list[dict], opts: RunOptions, window_s: float):
    """The lazy dataset of chunk rows (pipeline.sink.CHUNK_SCHEMA) for the listed sources."""
    import ray

    from pipeline.sink import CHUNK_SCHEMA
    from workers.inference import InferenceWorker

    limits = DecodeLimits(
        max_duration_s=opts.max_duration_s,
        timeout_s=opts.decode_timeout_s,
        max_input_bytes=opts.max_input_bytes,
    )
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 256)))
    ds = ds.map_batches(
        decode_and_chunk,
        batch_size=1,
        batch_format="pyarrow",
        fn_kwargs={"window_s": window_s, "limits": limits, "s3_endpoint": opts.s3_endpoint},
        num_cpus=1,
    )
    lo, hi = opts.workers
    return ds.map_batches(
        InferenceWorker,
        fn_constructor_kwargs={"opts": worker_options(opts), "schema": CHUNK_SCHEMA},
        compute=ray.data.ActorPoolStrategy(min_size=lo, max_size=hi),
        # continuous batching: the Ray batch is the actor's queue, several slot-fulls so slots rarely idle
        batch_size=max(opts.batch_size, 4 * opts.slots),
        batch_format="pyarrow",
        num_cpus=opts.cpus_per_worker,
        num_gpus=opts.gpus_per_worker or None,
    )


def worker_options(opts: RunOptions):
    """The inference actors' share of the run options: the run's PruneOptions (the same object) and the
    serving settings."""
    from workers.options import WorkerOptions

    return WorkerOptions(
        model=opts.model,
        prune=opts.prune,
        device=opts.device,
        gpus_per_worker=opts.gpus_per_worker,
        max_new_tokens=opts.max_new_tokens,
        s3_endpoint=opts.s3_endpoint,
        batch_size=opts.batch_size,
        max_batch_tokens=opts.max_batch_tokens,
        shadow_fraction=opts.shadow_fraction,
        cuda_graphs=opts.cuda_graphs,
        slots=opts.slots,
    )
