"""WorkerOptions: what one inference actor needs to know, built by the pipeline from its RunOptions."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["WorkerOptions"]


@dataclass(frozen=True)
class WorkerOptions:
    """How an InferenceWorker loads its model and batches chunks.

    batch_size: most chunks in one `generate` call; max_batch_tokens: most KV tokens in one call (None: no
    limit), counted per layer on average: layers < M hold each chunk's whole input, layers >= M its kept tokens,
    every layer its new tokens, and a padded batch costs its size times its longest chunk (see workers.batching).
    shadow_fraction: share of chunks also run unpruned (method vanilla) to measure agreement (workers.shadow).
    """

    model: str = "tiny-random"
    method: str = "headrouter"
    retain: float = 0.6
    layer: int = 2
    profiles: str | None = None
    skip_silence: str = "off"
    device: str = "cpu"
    gpus_per_worker: float = 0.0
    max_new_tokens: int = 64
    s3_endpoint: str | None = None
    batch_size: int = 4
    max_batch_tokens: int | None = None
    shadow_fraction: float = 0.0
