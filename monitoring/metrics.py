"""Every metric the pipeline exports, defined once.

Names follow the Prometheus conventions: base units (`_seconds`, `_bytes`), `_total` on counters, and labels kept
to a small closed set (model, method, task, status, profile, kind; never a file name). The same definitions back two
exporters: `ray.util.metrics` inside Ray actors (Ray prefixes every name with `ray_`; the scrape config in
`monitoring/stack.py` strips it so dashboards read one name) and `prometheus_client` registries in-process.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import prometheus_client

# `_created` series double every counter for nothing a dashboard uses.
prometheus_client.disable_created_metrics()

RAY_PREFIX = "ray_"
BASE_LABELS = ("model", "method", "task")
STATUSES = ("ok", "error")
PROFILES = ("semantic", "uniform", "acoustic")
# The pipeline tags errors "kind: detail" (pipeline/decode.py, workers/inference.py); these are its kinds.
ERROR_KINDS = (
    "empty",
    "no_audio",
    "too_large",
    "too_long",
    "invalid_samples",
    "invalid_audio",
    "decode_error",
    "read_error",
    "not_found",
    "not_a_file",
    "permission_denied",
    "forbidden",
    "timeout",
    "out_of_memory",
    "inference_error",
    "other",
)

AGREEMENT_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 1.0)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
COEFFICIENT_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


@dataclass(frozen=True)
class MetricSpec:
    name: str  # as exported by prometheus_client; Ray exports RAY_PREFIX + name
    kind: str  # counter | gauge | histogram
    help: str
    labels: tuple[str, ...] = BASE_LABELS
    buckets: tuple[float, ...] = ()


# Chunk-level metrics: recorded by whichever process runs inference (Ray actor or in-process).
AUDIO_SECONDS = MetricSpec(
    "headrouter_audio_seconds_total", "counter", "Seconds of audio in chunks processed ok."
)
CHUNKS = MetricSpec(
    "headrouter_chunks_total", "counter", "Chunks processed, by status.", (*BASE_LABELS, "status")
)
PREFILL = MetricSpec(
    "headrouter_prefill_seconds", "histogram", "Prefill latency per chunk.", buckets=LATENCY_BUCKETS
)
DECODE = MetricSpec(
    "headrouter_decode_seconds", "histogram", "Decode latency per chunk.", buckets=LATENCY_BUCKETS
)
PREPARE = MetricSpec(
    "headrouter_prepare_seconds",
    "histogram",
    "Host-side preparation per chunk (checks, features, the padded batch): its share of the model call.",
    buckets=LATENCY_BUCKETS,
)
LATENCY = MetricSpec(
    "headrouter_chunk_latency_seconds",
    "histogram",
    "End-to-end inference latency per chunk (features, prefill and decode).",
    buckets=LATENCY_BUCKETS,
)
AUDIO_TOKENS = MetricSpec("headrouter_audio_tokens_total", "counter", "Audio tokens entering the LLM.")
KEPT_TOKENS = MetricSpec("headrouter_audio_tokens_kept_total", "counter", "Audio tokens kept after pruning.")
KV_FULL = MetricSpec(
    "headrouter_kv_cache_full_bytes_total", "counter", "KV-cache bytes the chunks would take without pruning."
)
KV_KEPT = MetricSpec(
    "headrouter_kv_cache_kept_bytes_total", "counter", "KV-cache bytes the chunks took with pruning."
)
SKIPPED_SECONDS = MetricSpec(
    "headrouter_audio_skipped_seconds_total",
    "counter",
    "Audio seconds removed before the audio encoder as empty windows (skip_silence).",
)
PEAK_MEMORY = MetricSpec(
    "headrouter_accelerator_memory_peak_bytes",
    "gauge",
    "Peak accelerator memory allocated by this worker (set only where an accelerator exists).",
)
ROUTING = MetricSpec(
    "headrouter_routing_coefficient",
    "histogram",
    "HeadRouter routing coefficient per chunk, by profile (the paper's Figure 7).",
    (*BASE_LABELS, "profile"),
    COEFFICIENT_BUCKETS,
)
ERRORS = MetricSpec("headrouter_errors_total", "counter", "Chunk errors, by kind.", (*BASE_LABELS, "kind"))
BATCH_SPLITS = MetricSpec(
    "headrouter_batch_splits_total",
    "counter",
    "Batches split in two after running out of accelerator memory.",
)
# continuous batching (--slots): occupancy = rate(busy) / rate(slot steps), per actor
SLOT_STEPS = MetricSpec(
    "headrouter_slot_steps_total",
    "counter",
    "Decode slots summed over decode steps (continuous batching), per actor.",
    (*BASE_LABELS, "actor"),
)
SLOT_BUSY_STEPS = MetricSpec(
    "headrouter_slot_busy_steps_total",
    "counter",
    "Decode slots that chose a chunk's token, summed over decode steps (continuous batching), per actor.",
    (*BASE_LABELS, "actor"),
)
SLOT_REFILLS = MetricSpec(
    "headrouter_slot_refills_total",
    "counter",
    "Prefills into free decode slots (continuous batching), per actor.",
    (*BASE_LABELS, "actor"),
)
SHADOW_CHUNKS = MetricSpec(
    "headrouter_shadow_chunks_total",
    "counter",
    "Chunks also run unpruned (--shadow-fraction), by retain rounded to 0.1.",
    (*BASE_LABELS, "retain"),
)
SHADOW_AGREEMENT = MetricSpec(
    "headrouter_shadow_agreement",
    "histogram",
    "Agreement of a shadowed chunk's pruned answer with its unpruned one (ASR 1 - WER, QA exact match).",
    (*BASE_LABELS, "retain"),
    AGREEMENT_BUCKETS,
)

CHUNK_METRICS = (
    AUDIO_SECONDS,
    CHUNKS,
    PREFILL,
    DECODE,
    PREPARE,
    LATENCY,
    AUDIO_TOKENS,
    KEPT_TOKENS,
    KV_FULL,
    KV_KEPT,
    SKIPPED_SECONDS,
    PEAK_MEMORY,
    ROUTING,
    ERRORS,
    BATCH_SPLITS,
    SLOT_STEPS,
    SLOT_BUSY_STEPS,
    SLOT_REFILLS,
    SHADOW_CHUNKS,
    SHADOW_AGREEMENT,
)

# Run-level gauges: one set per batch run, pushed to the Pushgateway under job=<job name>, run_id=<run id>.
RUN_DURATION = MetricSpec("headrouter_run_duration_seconds", "gauge", "Wall time of the batch run.")
RUN_AUDIO_SECONDS = MetricSpec(
    "headrouter_run_audio_seconds", "gauge", "Seconds of audio processed ok by the run."
)
RUN_CHUNKS = MetricSpec(
    "headrouter_run_chunks", "gauge", "Chunks in the run, by status.", (*BASE_LABELS, "status")
)
RUN_AUDIO_TOKENS = MetricSpec(
    "headrouter_run_audio_tokens", "gauge", "Audio tokens entering the LLM in the run."
)
RUN_KEPT_TOKENS = MetricSpec("headrouter_run_audio_tokens_kept", "gauge", "Audio tokens kept in the run.")
RUN_KV_FULL = MetricSpec(
    "headrouter_run_kv_cache_full_bytes", "gauge", "KV-cache bytes without pruning, run total."
)
RUN_KV_KEPT = MetricSpec(
    "headrouter_run_kv_cache_kept_bytes", "gauge", "KV-cache bytes with pruning, run total."
)
RUN_START = MetricSpec("headrouter_run_start_timestamp_seconds", "gauge", "Unix time the batch run started.")
RUN_IN_PROGRESS = MetricSpec(
    "headrouter_run_in_progress", "gauge", "1 from the run's start until it finishes."
)
RUN_SUCCESS = MetricSpec("headrouter_run_success", "gauge", "1 if the run finished successfully, else 0.")
RUN_LAST_SUCCESS = MetricSpec(
    "headrouter_run_last_success_timestamp_seconds",
    "gauge",
    "Unix time the batch run last finished successfully (set only on success).",
)

RUN_METRICS = (
    RUN_START,
    RUN_IN_PROGRESS,
    RUN_DURATION,
    RUN_AUDIO_SECONDS,
    RUN_CHUNKS,
    RUN_AUDIO_TOKENS,
    RUN_KEPT_TOKENS,
    RUN_KV_FULL,
    RUN_KV_KEPT,
    RUN_SUCCESS,
    RUN_LAST_SUCCESS,
)

ALL_METRICS = CHUNK_METRICS + RUN_METRICS

# Untagged messages: (kind, pattern) in order, the first match wins.
_ERROR_PATTERNS = (
    ("out_of_memory", r"out of memory|\boom\b|memoryerror"),
    ("timeout", r"timed? ?out|timeout"),
    ("not_found", r"not found|no such file|nosuchkey|vanished|does not exist"),
    ("permission_denied", r"permission|access denied|forbidden"),
    ("invalid_samples", r"\bnan\b|\binf\b|non-?finite"),
    ("empty", r"\bempty\b|zero bytes|no audio samples"),
    ("too_long", r"too long|longer than|exceeds the (model )?window"),
    ("decode_error", r"decod|corrupt|truncat|unsupported|not audio|invalid data|soundfile|ffmpeg"),
    ("inference_error", r"cuda|generate|model|runtimeerror"),
)


def error_kind(message: str | None) -> str:
    """Map a chunk error to one of ERROR_KINDS (a closed set, so it is safe as a label).

    A "kind: detail" message whose kind is known keeps it; other messages are matched by keywords.
    """
    text = (message or "").strip().lower()
    tag = text.split(":", 1)[0].strip()
    if tag in ERROR_KINDS:
        return tag
    for kind, pattern in _ERROR_PATTERNS:
        if re.search(pattern, text):
            return kind
    return "other"


def retain_label(retain) -> str:
    """The retain ratio as a label: rounded to 0.1 (a closed set of 11 values), "unknown" when missing."""
    try:
        value = float(retain)
    except (TypeError, ValueError):
        return "unknown"
    return f"{min(1.0, max(0.0, round(value, 1))):.1f}" if value == value else "unknown"


def model_label(model: str | None) -> str:
    """A short model name: hub ids stay as they are, paths and URIs keep only their last component."""
    text = str(model or "unknown").rstrip("/")
    if "://" in text or text.startswith(("/", ".", "~")):
        text = text.rsplit("/", 1)[-1] or "unknown"
    return text[:64]
