"""Which chunks a shadow run repeats unpruned: a pure function of the source id and the chunk index.

A rerun (or another actor, or a resumed run) shadows the same chunks, so agreement is comparable across runs.
"""

from __future__ import annotations

import hashlib

__all__ = ["shadowed"]


def shadowed(source_id: str, chunk_index: int, fraction: float) -> bool:
    """True for about `fraction` of all (source, chunk) pairs: sha256 of the pair mapped to [0, 1) < fraction."""
    if fraction <= 0.0:
        return False
    if fraction >= 1.0:
        return True
    digest = hashlib.sha256(f"{source_id}\x00{int(chunk_index)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < fraction
