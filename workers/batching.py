"""Planning an actor's batch: chunks grouped as the engine groups them, by length, split into `generate` calls
under a KV-token budget.

A pure function (no model, no Ray): the engine's answers come in as arguments (`LALM.batch_groups`, and a cost
of a candidate call from `LALM.kv_tokens`), so this is the one place a batch is cut into calls and the engine
never regroups a planned call.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["plan_batches"]


def plan_batches(
    sizes: list[float],
    batch_size: int,
    max_batch_tokens: float | None = None,
    cost: Callable[[list[int]], float] | None = None,
    groups: list[list[int]] | None = None,
) -> list[list[int]]:
    """Indices 0..len(sizes)-1 grouped into calls, longest first, so that neighbours in length share a call.

    sizes: each chunk's own size (its cost alone); groups: indices that may share a call (default: all);
    cost(indices): what one call of these chunks costs (default: len x the largest size), kept at most
    `max_batch_tokens`. A call holds at most `batch_size` chunks of one group; a chunk above the budget on its own
    still gets a call of one (the model decides whether it fits). Every index appears exactly once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if cost is None:

        def cost(indices: list[int]) -> float:
            return len(indices) * max(sizes[i] for i in indices)

    calls: list[list[int]] = []
    for group in groups if groups is not None else [list(range(len(sizes)))]:
        current: list[int] = []
        for i in sorted(group, key=lambda i: (-sizes[i], i)):
            fits = len(current) < batch_size and (
                max_batch_tokens is None or cost([*current, i]) <= max_batch_tokens
            )
            if current and not fits:
                calls.append(current)
                current = []
            current.append(i)
        if current:
            calls.append(current)
    return calls
