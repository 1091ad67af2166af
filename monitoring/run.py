"""Run-level metrics of one batch run: a separate registry, pushed to a Pushgateway the batch-job way.

Grouping key job=<job name>, run_id=<run id>; `pushadd` so only this registry's metrics in that group are replaced;
the last-success gauge exists only in a registry whose run succeeded, so a failed run never overwrites it.
"""

from __future__ import annotations

import logging
import time

from prometheus_client import CollectorRegistry, Gauge, pushadd_to_gateway, start_http_server

from monitoring import metrics as m
from monitoring.chunk import LOCAL_REGISTRY, _number

__all__ = ["RunMetrics", "serve"]

log = logging.getLogger("monitoring")

_SERVED = CollectorRegistry()  # what `serve` exposes: LOCAL_REGISTRY and the latest served RunMetrics
_SERVED.register(LOCAL_REGISTRY)
_current: list[CollectorRegistry] = []


def serve(port: int, addr: str = "127.0.0.1"):
    """Serve /metrics (chunk metrics recorded in-process and the latest RunMetrics) on addr:port; returns the server."""
    server, _thread = start_http_server(port, addr=addr, registry=_SERVED)
    log.info("serving metrics on http://%s:%d/metrics", addr, server.server_port)
    return server


class RunMetrics:
    """Totals of one batch run as gauges; `finish` sets the outcome and pushes when a gateway is given."""

    def __init__(
        self,
        job: str,
        run_id: str,
        model: str,
        method: str,
        task: str,
        gateway: str | None = None,
        served: bool = True,
    ):
        self.job, self.run_id, self.gateway = job, str(run_id), gateway
        self.labels = {"model": m.model_label(model), "method": str(method), "task": str(task)}
        self.registry = CollectorRegistry(auto_describe=True)
        self._gauges = {
            spec.name: Gauge(spec.name, spec.help, spec.labels, registry=self.registry)
            for spec in m.RUN_METRICS
            if spec is not m.RUN_LAST_SUCCESS
        }
        self._totals = dict.fromkeys(
            ("audio_s", "ok", "error", "audio_tokens", "kept_tokens", "kv_bytes_full", "kv_bytes_kept"), 0.0
        )
        self._started = time.monotonic()
        self._gauges[m.RUN_START.name].labels(**self.labels).set(time.time())
        self._gauges[m.RUN_IN_PROGRESS.name].labels(**self.labels).set(1)
        self._update()
        if served:
            while _current:
                _SERVED.unregister(_current.pop())
            _SERVED.register(self.registry)
            _current.append(self.registry)

    def start(self) -> bool:
        """Push the run's start (in progress, start time) if a gateway is set; True if pushed."""
        return self.push() if self.gateway else False

    def observe(self, row: dict) -> None:
        """Add one chunk row to the run's totals."""
        t = self._totals
        if row.get("status") != "ok":
            t["error"] += 1
        else:
            t["ok"] += 1
            start, end = _number(row.get("start_s")), _number(row.get("end_s"))
            if start is not None and end is not None and end > start:
                t["audio_s"] += end - start
            for column in ("audio_tokens", "kept_tokens", "kv_bytes_full", "kv_bytes_kept"):
                t[column] += _number(row.get(column)) or 0.0
        self._update()

    def observe_rows(self, rows) -> None:
        """Add many chunk rows: an iterable of dicts or a pyarrow Table."""
        if hasattr(rows, "to_pylist"):
            rows = rows.to_pylist()
        for row in rows:
            self.observe(row)

    def finish(self, success: bool, duration_s: float | None = None) -> bool:
        """Record the outcome (last success only when success) and push if a gateway is set; True if pushed."""
        duration = time.monotonic() - self._started if duration_s is None else duration_s
        self._gauges[m.RUN_DURATION.name].labels(**self.labels).set(duration)
        self._gauges[m.RUN_SUCCESS.name].labels(**self.labels).set(1 if success else 0)
        self._gauges[m.RUN_IN_PROGRESS.name].labels(**self.labels).set(0)
        if success:
            last = Gauge(
                m.RUN_LAST_SUCCESS.name,
                m.RUN_LAST_SUCCESS.help,
                m.RUN_LAST_SUCCESS.labels,
                registry=self.registry,
            )
            last.labels(**self.labels).set(time.time())
        return self.push() if self.gateway else False

    def push(self) -> bool:
        """pushadd this run's registry to the gateway; a failed push is logged, never raised."""
        try:
            pushadd_to_gateway(
                self.gateway,
                job=self.job,
                registry=self.registry,
                grouping_key={"run_id": self.run_id},
                timeout=10,
            )
        except OSError as exc:
            log.error("could not push run metrics to %s: %s", self.gateway, exc)
            return False
        log.info("pushed run metrics to %s (job=%s, run_id=%s)", self.gateway, self.job, self.run_id)
        return True

    def close(self) -> None:
        """Stop serving this run's registry from `serve`."""
        if self.registry in _current:
            _current.remove(self.registry)
            _SERVED.unregister(self.registry)

    def _update(self) -> None:
        t, lab = self._totals, self.labels
        g = self._gauges
        g[m.RUN_AUDIO_SECONDS.name].labels(**lab).set(t["audio_s"])
        g[m.RUN_CHUNKS.name].labels(**lab, status="ok").set(t["ok"])
        g[m.RUN_CHUNKS.name].labels(**lab, status="error").set(t["error"])
        g[m.RUN_AUDIO_TOKENS.name].labels(**lab).set(t["audio_tokens"])
        g[m.RUN_KEPT_TOKENS.name].labels(**lab).set(t["kept_tokens"])
        g[m.RUN_KV_FULL.name].labels(**lab).set(t["kv_bytes_full"])
        g[m.RUN_KV_KEPT.name].labels(**lab).set(t["kv_bytes_kept"])
