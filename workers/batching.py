"""Planning an actor's batch: chunks grouped by length, split into `generate` calls under a KV-token budget.

Pure functions (no model, no Ray), so the plan is tested on its own and the benchmark counts with the same rule.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KVCost", "plan_batches"]


@dataclass(frozen=True)
class KVCost:
    """KV tokens one chunk holds at the end of generation, averaged over the decoder's layers.

    Layers < M cache the whole input (text + audio), layers >= M the kept input, every layer the new tokens:
    cost = (M * input + (L - M) * kept) / L + new. A pruned chunk costs less, so a budget fits more of them.
    """

    num_layers: int
    layer: int  # pruning layer M (with nothing pruned, kept == input and M does not matter)
    max_new_tokens: int

    def __call__(self, input_tokens: int, kept_tokens: int) -> float:
        m, n = self.layer, self.num_layers
        return (m * input_tokens + (n - m) * kept_tokens) / n + self.max_new_tokens


def plan_batches(costs: list[float], batch_size: int, max_batch_tokens: float | None) -> list[list[int]]:
    """Indices of `costs` grouped into batches, longest first, so that neighbours in length share a batch.

    A batch holds at most `batch_size` chunks and, padded to its longest chunk, at most `max_batch_tokens`
    (size x longest cost). A chunk above the budget on its own still gets a batch of one (the model decides
    whether it fits). Every index appears exactly once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = costs[current[0]] if current else costs[i]  # sorted: the first is the longest
        fits = len(current) < batch_size and (
            max_batch_tokens is None or (len(current) + 1) * longest <= max_batch_tokens
        )
        if current and not fits:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches
