"""Pre-RoPE queries and keys of one stock decoder attention, computed the way the model's own forward does.

Three layouts occur in the supported families:
  - separate `q_proj` / `k_proj` (with bias: Qwen2.5-Omni, Qwen2-Audio; without: Voxtral's Llama decoder);
  - a fused `qkv_proj` split as [H*d | Hkv*d | Hkv*d] (Phi-4-multimodal);
  - per-head RMS `q_norm` / `k_norm` after the projection and before RoPE (Qwen3-Omni thinker).
"""

from __future__ import annotations

import sys

import torch

__all__ = ["check_attention", "project_qk", "rope_fn"]


def _sizes(attn) -> tuple[int, int, int]:
    config = attn.config
    return int(config.num_attention_heads), int(config.num_key_value_heads), int(attn.head_dim)


def check_attention(attn) -> None:
    """Assert that `attn` is an attention module `project_qk` and `rope_fn` understand (clear message otherwise)."""
    name = type(attn).__name__
    for field in ("config", "head_dim"):
        assert hasattr(attn, field), f"{name} has no {field}: unsupported attention"
    heads, kv, d = _sizes(attn)
    assert heads % kv == 0, f"{name}: {heads} query heads are not a multiple of {kv} KV heads"
    fused = getattr(attn, "qkv_proj", None)
    if fused is not None:
        assert fused.out_features == (heads + 2 * kv) * d, (
            f"{name}.qkv_proj gives {fused.out_features} features, expected (H + 2*Hkv) * d = {(heads + 2 * kv) * d}"
        )
    else:
        for proj, n in (("q_proj", heads), ("k_proj", kv)):
            assert hasattr(attn, proj), f"{name} has neither qkv_proj nor {proj}: unsupported attention"
            out = getattr(attn, proj).out_features
            assert out == n * d, f"{name}.{proj} gives {out} features, expected {n} heads x {d}"
    for norm in ("q_norm", "k_norm"):
        module = getattr(attn, norm, None)
        if module is not None:
            weight = getattr(module, "weight", None)
            assert weight is not None and weight.shape[-1] == d, (
                f"{name}.{norm} is not a per-head norm over head_dim {d}: unsupported attention"
            )
    module = sys.modules[type(attn).__module__]
    assert hasattr(module, "apply_rotary_pos_emb"), f"{module.__name__} has no apply_rotary_pos_emb"


def project_qk(attn, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """states [T, D] (the attention's input, i.e. after input_layernorm) -> (q [H, T, d], k [Hkv, T, d]).

    Exactly what the stock attention computes before RoPE: the projections with their bias when they have one,
    the fused projection split as the stock class splits it, and q_norm/k_norm where the stock class applies them.
    """
    heads, kv, d = _sizes(attn)
    fused = getattr(attn, "qkv_proj", None)
    if fused is not None:
        qkv = fused(states)  # [T, (H + 2*Hkv) * d]
        q, k = qkv[..., : heads * d], qkv[..., heads * d : (heads + kv) * d]
    else:
        q, k = attn.q_proj(states), attn.k_proj(states)  # [T, H*d], [T, Hkv*d]
    q = q.view(states.shape[0], heads, d)  # [T, H, d]
    k = k.view(states.shape[0], kv, d)  # [T, Hkv, d]
    if getattr(attn, "q_norm", None) is not None:
        q = attn.q_norm(q)
    if getattr(attn, "k_norm", None) is not None:
        k = attn.k_norm(k)
    return q.transpose(0, 1), k.transpose(0, 1)  # [H, T, d], [Hkv, T, d]


def rope_fn(attn):
    """The model's own `apply_rotary_pos_emb(q, k, cos, sin)` (from the attention class's module).

    Partial rotary (Phi-4-multimodal: cos/sin narrower than head_dim) is handled inside the stock function, which
    rotates the first cos.shape[-1] dims and passes the rest through; no wrapper is needed.
    """
    return sys.modules[type(attn).__module__].apply_rotary_pos_emb
