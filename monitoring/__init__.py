"""Operations: metric definitions, exporters (Ray actors, Pushgateway, /metrics), dashboards and alert rules."""

from monitoring.chunk import LOCAL_REGISTRY, ChunkMetrics
from monitoring.metrics import ALL_METRICS, CHUNK_METRICS, RUN_METRICS, error_kind
from monitoring.run import RunMetrics, serve

__all__ = [
    "ALL_METRICS",
    "CHUNK_METRICS",
    "LOCAL_REGISTRY",
    "RUN_METRICS",
    "ChunkMetrics",
    "RunMetrics",
    "error_kind",
    "serve",
]
