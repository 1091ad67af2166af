"""KV cache byte accounting, measured from the cache tensors themselves."""

from __future__ import annotations

__all__ = ["cache_layer_stats", "kv_bytes", "per_token_bytes"]


def cache_layer_stats(cache) -> list[tuple[int, int]]:
    """(bytes, cached tokens) of keys + values for every layer of a transformers `Cache` (DynamicCache layers)."""
    stats = []
    for layer in cache.layers:
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if keys is None or values is None or keys.numel() == 0:
            stats.append((0, 0))
            continue
        # keys/values: [B, n_kv, T_i, head_dim]; T_i differs between layers once pruning has run
        nbytes = keys.numel() * keys.element_size() + values.numel() * values.element_size()
        stats.append((nbytes, int(keys.shape[-2])))
    return stats


def kv_bytes(cache, full_length: int) -> tuple[int, int]:
    """(bytes as the cache would be without pruning, bytes as it is) for a cache of one sample.

    The first is each layer's measured bytes per cached token times `full_length` (the unpruned sequence
    length), so it equals what an unpruned run of the same input measures.
    """
    full = kept = 0
    for nbytes, tokens in cache_layer_stats(cache):
        kept += nbytes
        if tokens:
            if nbytes % tokens:
                raise AssertionError(
                    f"cache layer of {nbytes} bytes is not a whole number of {tokens} tokens"
                )
            full += nbytes // tokens * full_length
    return full, kept


def per_token_bytes(cache) -> list[int]:
    """Bytes of keys + values one cached token of one sample takes in each layer, read from the cache tensors
    ([B, n_kv, T_i, head_dim]); a sample's cache is its token count per layer times these."""
    out = []
    for layer in cache.layers:
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if keys is None or values is None or keys.numel() == 0:
            out.append(0)
            continue
        per_row = (
            keys[0, :, 0].numel() * keys.element_size() + values[0, :, 0].numel() * values.element_size()
        )
        out.append(int(per_row))
    return out
