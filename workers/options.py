"""WorkerOptions: what one inference actor needs to know, built by the pipeline from its RunOptions."""

from __future__ import annotations

from dataclasses import dataclass, field

from headrouter.options import PruneOptions

__all__ = ["WorkerOptions"]


@dataclass(frozen=True)
class WorkerOptions:
    """How an InferenceWorker loads its model and batches chunks; `prune` is the run's PruneOptions, passed on
    to every `generate` call unchanged (a call may take other options: `InferenceWorker.infer(rows, prune)`).

    batch_size: most chunks in one `generate` call; max_batch_tokens: most KV tokens in one call (None: no
    limit), in `LALM.kv_tokens` terms: per layer on average, a padded call holding its size times its longest
    input (layers < M) and its longest kept input (layers >= M), every layer its new tokens.
    shadow_fraction: share of chunks also run unpruned (method vanilla) to measure agreement (workers.shadow).
    cuda_graphs: on CUDA, capture each call's decode step as a graph and replay it (False: eager, for debugging;
    the same tokens either way; `headrouter.engine.loop.EngineOptions`).
    slots: 0: static calls (planned by `plan_batches`); N > 0: continuous batching over N decode slots
    (`LALM.stream`): the actor's Ray batch is its queue, so a finished chunk hands its slot to the next one of
    the batch (the pipeline takes Ray batches of at least 4 x slots chunks).
    """

    model: str = "tiny-random"
    prune: PruneOptions = field(default_factory=PruneOptions)
    device: str = "cpu"
    gpus_per_worker: float = 0.0
    max_new_tokens: int = 64
    s3_endpoint: str | None = None
    batch_size: int = 4
    max_batch_tokens: int | None = None
    shadow_fraction: float = 0.0
    cuda_graphs: bool = True
    slots: int = 0
