"""What the inference worker needs from the engine: `headrouter.engine.LALM` implements it, and so do the tests'
fakes. Typed here so the worker reads attributes and calls methods instead of probing them with defaults."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from headrouter.options import PruneOptions

__all__ = ["Engine", "Generation"]


class Generation(Protocol):
    """One sample's result (`headrouter.engine.GenerationOutput`)."""

    text: str
    audio_tokens: int
    kept_tokens: int
    routing: dict | None  # {"alpha": (semantic, uniform, acoustic), "spread": float, ...} or None
    kv_bytes_full: int
    kv_bytes_kept: int
    prefill_s: float
    decode_s: float
    prepare_s: float  # host-side preparation: prefill_s + decode_s + prepare_s is the sample's call share
    skipped_s: float
    silent: bool


class Engine(Protocol):
    """A loaded model as the worker uses it (`headrouter.engine.LALM`)."""

    model_id: str
    window_s: float  # longest clip (seconds) one call takes
    asr_prompt: str  # the prompt of task "asr" (a model folder may set its own)

    def generate(
        self, audios: list[np.ndarray], prompts: list[str], options: PruneOptions, max_new_tokens: int
    ) -> list[Generation]:
        """One result per clip; raises `headrouter.engine.AudioInputError` for a bad clip."""
        ...

    def stream(self, requests, options: PruneOptions, max_new_tokens: int, *, slots: int, stats=None):
        """Continuous batching (`--slots`): (key, Generation or exception) per `headrouter.engine.stream.Request`
        as each finishes; `stats` (a `StreamStats`) collects slot-steps and refills."""
        ...

    def token_counts(self, num_samples: int, prompt: str) -> tuple[int, int]:
        """(input tokens, audio tokens) of one clip with its prompt."""
        ...

    def batch_groups(self, num_samples: list[int]) -> list[list[int]]:
        """Indices of clips that may share one call."""
        ...

    def kv_tokens(self, counts: list[tuple[int, int]], options: PruneOptions, max_new_tokens: int) -> float:
        """KV tokens (per layer on average) of one call of clips with these (input, audio) token counts."""
        ...
