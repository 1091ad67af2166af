"""KV buffers allocated once per generate call and written in place (gpt-fast's static cache, two sizes).

Layers < M hold the whole (left-padded) input, layers >= M only the kept layout of the pruned prefill, so the
buffers come in two groups, each sized to its prefill length plus `max_new_tokens`. The stock attention modules
write a decode step's key/value through `update`, at the group's write column, a device tensor that the loop
advances in place (so a captured CUDA graph replays the same kernels at the next column).
"""

from __future__ import annotations

import torch

__all__ = ["StaticKV"]


class StaticKV:
    """Per-layer key/value buffers [B, Hkv, S_g, d] in two groups (g = 0: layers < M, g = 1: layers >= M).

    `column[g]` ([1] long, on the device) is where the next token's key/value go in group g; `prefill_len[g]`
    is how many columns the prefill filled. Quacks like a transformers `Cache` where the stock attention
    touches it (`update`); nothing else of the Cache API is used by the decode loop.
    """

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], group: list[int], prefill_len):
        self.keys, self.values = keys, values  # [B, Hkv, S_g, d] per layer
        self.group = group  # [L] 0 or 1
        self.prefill_len = list(prefill_len)  # [2] columns filled by the prefill
        device = keys[0].device
        self.column = [
            torch.tensor([n], dtype=torch.long, device=device) for n in self.prefill_len
        ]  # [1] each
        self.view: list[int] | None = None  # eager steps: columns per group `update` returns (None: all)

    @classmethod
    def from_prefill(cls, cache, group: list[int], max_new_tokens: int) -> StaticKV:
        """Buffers sized prefill length + max_new_tokens, filled with a prefill's DynamicCache (whose tensors
        are released layer by layer as they are copied, so the peak is one layer above the buffers)."""
        keys, values, lengths = [], [], [0, 0]
        for i, layer in enumerate(cache.layers):
            k, v = layer.keys, layer.values  # [B, Hkv, T_i, d]
            t = int(k.shape[-2])
            g = group[i]
            if lengths[g] and lengths[g] != t:
                raise AssertionError(f"layer {i}: {t} cached tokens, its group holds {lengths[g]}")
            lengths[g] = t
            kb = k.new_zeros(*k.shape[:2], t + max_new_tokens, k.shape[-1])  # [B, Hkv, T_g + new, d]
            vb = v.new_zeros(*v.shape[:2], t + max_new_tokens, v.shape[-1])
            kb[:, :, :t] = k
            vb[:, :, :t] = v
            layer.keys = layer.values = None
            keys.append(kb)
            values.append(vb)
        if 1 not in group:
            lengths[1] = lengths[0]
        return cls(keys, values, group, lengths)

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        """Write one step's key/value [B, Hkv, 1, d] at the group's column; return the whole buffers."""
        g = self.group[layer_idx]
        self.keys[layer_idx].index_copy_(2, self.column[g], key_states)
        self.values[layer_idx].index_copy_(2, self.column[g], value_states)
        if self.view is not None:  # [B, Hkv, view, d]: the columns written so far
            return self.keys[layer_idx][:, :, : self.view[g]], self.values[layer_idx][:, :, : self.view[g]]
        return self.keys[layer_idx], self.values[layer_idx]

    def advance(self) -> None:
        for col in self.column:
            col.add_(1)

    def capacity(self) -> list[int]:
        """Columns per group (prefill length + max_new_tokens)."""
        sizes = [0, 0]
        for i, k in enumerate(self.keys):
            sizes[self.group[i]] = int(k.shape[-2])
        if 1 not in self.group:
            sizes[1] = sizes[0]
        return sizes

    def slots(self) -> int:
        """KV token slots allocated, summed over layers and rows (what the batch planner counts)."""
        return sum(int(k.shape[0]) * int(k.shape[-2]) for k in self.keys)
