"""Audio-encoder windows in one attention call per layer (Qwen2.5-Omni and Qwen3-Omni).

The stock encoders attend within independent windows (block-diagonal, `cu_seqlens`); on the SDPA and eager paths
transformers splits the sequence and calls attention once per window, so a 300-s chunk costs 150 windows x 32
layers = 4,800 small calls (host-bound on a GPU). `batch_encoder_windows` swaps each encoder attention module's
`forward` for one that stacks every window of the same length into one [windows, heads, length, head_dim] call:
all full windows of all clips go through one call per layer, and each distinct partial length (at most one per
clip) gets its own. No masks are needed, so every window sees exactly the keys it sees in the stock loop.
The flash-attention path (already one varlen call) is left alone.
"""

from __future__ import annotations

import types

import torch

__all__ = ["WindowBatching", "batch_encoder_windows", "encoder_attention_modules"]


def encoder_attention_modules(audio_tower) -> list:
    """The self-attention modules of a windowed audio encoder, each asserted to have the stock fields."""
    modules = [layer.self_attn for layer in audio_tower.layers]
    for attn in modules:
        for name in ("q_proj", "k_proj", "v_proj", "out_proj", "num_heads", "scaling", "config"):
            assert hasattr(attn, name), (
                f"{type(attn).__name__} has no {name}: not a windowed encoder attention"
            )
    return modules


class WindowBatching:
    """Handle of `batch_encoder_windows`: `remove()` restores the stock forwards."""

    def __init__(self, modules: list):
        self.modules = modules
        self.stock = [m.forward for m in modules]
        self._plan_key = None  # the cu_seqlens tensor the cached plan was made for (one per encoder forward)
        self._plan = None
        for m in modules:
            m.forward = types.MethodType(_make_forward(self, m.forward), m)

    def remove(self) -> None:
        for m, f in zip(self.modules, self.stock):
            m.forward = f
        self.modules = []

    def plan(self, cu_seqlens: torch.Tensor) -> list[tuple[int, torch.Tensor | slice]]:
        """[(window length L, rows)] grouping the windows of equal length: rows is a slice when the windows lie
        back to back (one clip's full windows: a view, no copy), else a row index [n_w, L]; computed once per
        encoder forward (every layer gets the same cu_seqlens tensor), so one host sync per forward."""
        if self._plan_key is not cu_seqlens:
            bounds = cu_seqlens.tolist()
            by_length: dict[int, list[int]] = {}
            for start, end in zip(bounds[:-1], bounds[1:]):
                if end > start:
                    by_length.setdefault(end - start, []).append(start)
            device = cu_seqlens.device
            plan = []
            for length, starts in sorted(by_length.items(), reverse=True):
                if starts == list(range(starts[0], starts[0] + length * len(starts), length)):
                    plan.append((length, slice(starts[0], starts[0] + length * len(starts))))
                    continue
                first = torch.tensor(starts, dtype=torch.long, device=device)  # [n_w]
                plan.append((length, first[:, None] + torch.arange(length, device=device)[None]))  # [n_w, L]
            self._plan_key, self._plan = cu_seqlens, plan
        return self._plan


def _make_forward(handle: WindowBatching, stock_forward):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.utils.generic import is_flash_attention_requested

    def forward(self, hidden_states: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen=None, **kwargs):
        if is_flash_attention_requested(self.config) or self.training:
            return stock_forward(hidden_states, cu_seqlens, max_seqlen=max_seqlen, **kwargs)
        n, _ = hidden_states.shape  # [N, D]: every window of every clip, concatenated
        q = self.q_proj(hidden_states).reshape(n, self.num_heads, -1)  # [N, H, d]
        k = self.k_proj(hidden_states).reshape(n, self.num_heads, -1)
        v = self.v_proj(hidden_states).reshape(n, self.num_heads, -1)
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, None)
        if attention is None:
            from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import eager_attention_forward

            attention = eager_attention_forward
        out = torch.empty_like(q)  # [N, H, d]
        for length, rows in handle.plan(cu_seqlens):
            n_w = (rows.stop - rows.start) // length if isinstance(rows, slice) else rows.shape[0]
            # [n_w, L, H, d] -> [n_w, H, L, d]: the windows of this length as one batch (a view for a slice)
            qw, kw, vw = (x[rows].reshape(n_w, length, self.num_heads, -1).transpose(1, 2) for x in (q, k, v))
            o, _ = attention(self, qw, kw, vw, attention_mask=None, scaling=self.scaling, dropout=0.0,
                             is_causal=False, **kwargs)  # fmt: skip
            out[rows] = o.reshape(out[rows].shape)  # [n_w * L or n_w, L, H, d]
        return self.out_proj(out.reshape(n, -1))  # [N, D]

    return forward


def batch_encoder_windows(audio_tower) -> WindowBatching:
    """Swap the forward of every attention module of `audio_tower` for the one-call-per-length version."""
    return WindowBatching(encoder_attention_modules(audio_tower))
