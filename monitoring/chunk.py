"""Chunk-level metrics, recorded from a chunk row (the columns of `chunks/`).

One class, two back ends: inside a Ray worker the metrics go through `ray.util.metrics` to the node's metrics agent;
anywhere else they go to a `prometheus_client` registry (`LOCAL_REGISTRY` unless one is given), which
`monitoring.serve` exposes on `/metrics`.
"""

from __future__ import annotations

import logging
import math
import sys
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from monitoring import metrics as m

__all__ = ["LOCAL_REGISTRY", "ChunkMetrics", "in_ray_worker"]

log = logging.getLogger("monitoring")

LOCAL_REGISTRY = CollectorRegistry(auto_describe=True)
_FAMILIES: dict[tuple[int, str], Any] = {}  # (id(registry), name) -> prometheus_client metric


def in_ray_worker() -> bool:
    """True inside a Ray task or actor process (not the driver)."""
    if "ray" not in sys.modules:
        return False
    import ray

    return ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE


def _number(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _peak_accelerator_bytes() -> int | None:
    torch = sys.modules.get("torch")  # never import torch just for this
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return int(torch.cuda.max_memory_allocated())


class _PromBackend:
    def __init__(self, registry: CollectorRegistry):
        self.registry = registry

    def _family(self, spec: m.MetricSpec):
        key = (id(self.registry), spec.name)
        if key not in _FAMILIES:
            args = dict(
                name=spec.name, documentation=spec.help, labelnames=spec.labels, registry=self.registry
            )
            if spec.kind == "counter":
                # prometheus_client appends _total itself.
                args["name"] = spec.name.removesuffix("_total")
                _FAMILIES[key] = Counter(**args)
            elif spec.kind == "gauge":
                _FAMILIES[key] = Gauge(**args)
            else:
                _FAMILIES[key] = Histogram(**args, buckets=spec.buckets)
        return _FAMILIES[key]

    def inc(self, spec, value, labels):
        self._family(spec).labels(**labels).inc(value)

    def observe(self, spec, value, labels):
        self._family(spec).labels(**labels).observe(value)

    def set(self, spec, value, labels):
        self._family(spec).labels(**labels).set(value)

    def touch(self, spec, labels):
        self._family(spec).labels(**labels)  # a zero series from the start, so rate() sees the first increase


class _RayBackend:
    def __init__(self):
        from ray.util import metrics as rm

        self._metrics = {}
        for spec in m.CHUNK_METRICS:
            if spec.kind == "counter":
                self._metrics[spec.name] = rm.Counter(spec.name, spec.help, spec.labels)
            elif spec.kind == "gauge":
                self._metrics[spec.name] = rm.Gauge(spec.name, spec.help, spec.labels)
            else:
                self._metrics[spec.name] = rm.Histogram(spec.name, spec.help, list(spec.buckets), spec.labels)

    def inc(self, spec, value, labels):
        if value > 0:  # ray's Counter.inc rejects 0
            self._metrics[spec.name].inc(value, tags=labels)

    def observe(self, spec, value, labels):
        self._metrics[spec.name].observe(value, tags=labels)

    def set(self, spec, value, labels):
        self._metrics[spec.name].set(value, tags=labels)

    def touch(self, spec, labels):
        pass  # Ray has no zero-valued counters; its series appear with the first record


class ChunkMetrics:
    """Record chunk rows as metrics.

    backend: "auto" (Ray inside a Ray worker, else prometheus_client), "ray" or "prometheus".
    registry: the prometheus_client registry for the in-process back end (default LOCAL_REGISTRY).
    """

    def __init__(self, backend: str = "auto", registry: CollectorRegistry | None = None):
        if backend == "auto":
            backend = "ray" if in_ray_worker() else "prometheus"
        if backend not in ("ray", "prometheus"):
            raise ValueError(f"unknown metrics backend {backend!r}")
        self.backend = backend
        self._sink = _RayBackend() if backend == "ray" else _PromBackend(registry or LOCAL_REGISTRY)
        self._touched: set[tuple[str, ...]] = set()

    def observe(self, row: dict, latency_s: float | None = None) -> None:
        """Record one chunk row; latency_s is the chunk's end-to-end time (default prefill_s + decode_s
        + prepare_s)."""
        labels = {
            "model": m.model_label(row.get("model")),
            "method": str(row.get("method") or "unknown"),
            "task": str(row.get("task") or "unknown"),
        }
        self._touch(labels)
        sink = self._sink
        ok = row.get("status") == "ok"
        sink.inc(m.CHUNKS, 1, {**labels, "status": "ok" if ok else "error"})
        if not ok:
            sink.inc(m.ERRORS, 1, {**labels, "kind": m.error_kind(row.get("error"))})
            return
        start, end = _number(row.get("start_s")), _number(row.get("end_s"))
        if start is not None and end is not None and end > start:
            sink.inc(m.AUDIO_SECONDS, end - start, labels)
        for spec, column in (
            (m.AUDIO_TOKENS, "audio_tokens"),
            (m.KEPT_TOKENS, "kept_tokens"),
            (m.KV_FULL, "kv_bytes_full"),
            (m.KV_KEPT, "kv_bytes_kept"),
            (m.SKIPPED_SECONDS, "skipped_s"),
        ):
            value = _number(row.get(column))
            if value is not None and value >= 0:
                sink.inc(spec, value, labels)
        prefill, decode = _number(row.get("prefill_s")), _number(row.get("decode_s"))
        prepare = _number(row.get("prepare_s"))
        for spec, value in ((m.PREFILL, prefill), (m.DECODE, decode), (m.PREPARE, prepare)):
            if value is not None:
                sink.observe(spec, value, labels)
        latency = _number(latency_s)
        if latency is None and prefill is not None and decode is not None:
            latency = prefill + decode + (prepare or 0.0)
        if latency is not None:
            sink.observe(m.LATENCY, latency, labels)
        for profile in m.PROFILES:
            alpha = _number(row.get(f"alpha_{profile}"))
            if alpha is not None:
                sink.observe(m.ROUTING, alpha, {**labels, "profile": profile})
        peak = _peak_accelerator_bytes()
        if peak is not None:
            sink.set(m.PEAK_MEMORY, peak, labels)
        by_retain = {**labels, "retain": m.retain_label(row.get("retain"))}
        self._touch_retain(by_retain)
        agreement = _number(row.get("shadow_agreement"))
        if agreement is not None:
            sink.inc(m.SHADOW_CHUNKS, 1, by_retain)
            sink.observe(m.SHADOW_AGREEMENT, agreement, by_retain)

    def observe_split(self, labels: dict) -> None:
        """Count one batch split after an out-of-memory error (labels: model, method, task)."""
        labels = {"model": m.model_label(labels.get("model")), "method": str(labels.get("method") or "unknown"),
                  "task": str(labels.get("task") or "unknown")}  # fmt: skip
        self._touch(labels)
        self._sink.inc(m.BATCH_SPLITS, 1, labels)

    def observe_slots(self, labels: dict, busy: int, slot_steps: int, refills: int) -> None:
        """One continuous-batching stream of this actor: slot-steps that chose a token (`busy`), slot-steps in
        all, refills (labels: model, method, task; the actor is this process)."""
        labels = {"model": m.model_label(labels.get("model")), "method": str(labels.get("method") or "unknown"),
                  "task": str(labels.get("task") or "unknown"), "actor": _actor()}  # fmt: skip
        self._sink.inc(m.SLOT_BUSY_STEPS, busy, labels)
        self._sink.inc(m.SLOT_STEPS, slot_steps, labels)
        self._sink.inc(m.SLOT_REFILLS, refills, labels)

    def _touch_retain(self, labels: dict) -> None:
        key = (labels["model"], labels["method"], labels["task"], labels["retain"])
        if key not in self._touched:
            self._touched.add(key)
            self._sink.touch(m.SHADOW_CHUNKS, labels)

    def _touch(self, labels: dict) -> None:
        key = (labels["model"], labels["method"], labels["task"])
        if key in self._touched:
            return
        self._touched.add(key)
        specs = (
            m.AUDIO_SECONDS,
            m.AUDIO_TOKENS,
            m.KEPT_TOKENS,
            m.KV_FULL,
            m.KV_KEPT,
            m.SKIPPED_SECONDS,
            m.BATCH_SPLITS,
        )
        for spec in specs:
            self._sink.touch(spec, labels)
        for status in m.STATUSES:
            self._sink.touch(m.CHUNKS, {**labels, "status": status})


def _actor() -> str:
    """This process as an actor label: the Ray actor id's first 12 hex digits, else "local-<pid>"."""
    import os

    if in_ray_worker():
        import ray

        actor = ray.get_runtime_context().get_actor_id()
        if actor:
            return actor[:12]
    return f"local-{os.getpid()}"
