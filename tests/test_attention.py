"""project_qk / rope_fn against each family's own attention: the q/k it computes before RoPE, and after."""

from __future__ import annotations

import pytest
import torch

from headrouter.attention import check_attention, project_qk, rope_fn
from tests.families import FAMILIES
from tests.test_engine import PROMPT, clip, tiny


def capture_stock_qk(lalm, layer_index, inputs):
    """(attention input [T, D], post-RoPE q [H, T, d], post-RoPE k [Hkv, T, d], cos, sin) of one unhooked prefill,
    q/k captured where the stock attention hands them to its attention function."""
    attn = lalm.layers[layer_index].self_attn
    got = {}

    def pre(module, args, kwargs):
        got["states"] = kwargs.get("hidden_states", args[0] if args else None)[0].clone()
        got["cos"], got["sin"] = (x.clone() for x in kwargs["position_embeddings"])

    def spy(module, query, key, value, *args, **kwargs):
        if module is attn:
            got["q"], got["k"] = query[0].clone(), key[0].clone()
        return real(module, query, key, value, *args, **kwargs)

    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    impl = lalm.model.config._attn_implementation
    real = ALL_ATTENTION_FUNCTIONS[impl]
    handle = attn.register_forward_pre_hook(pre, with_kwargs=True)
    ALL_ATTENTION_FUNCTIONS[impl] = spy
    try:
        with torch.inference_mode():
            lalm.model(**inputs, use_cache=False)
    finally:
        ALL_ATTENTION_FUNCTIONS[impl] = real
        handle.remove()
    return got


@pytest.mark.parametrize("alias", FAMILIES)
@torch.inference_mode()
def test_project_qk_is_the_stock_attention_before_rope(alias):
    lalm = tiny(alias)
    inputs = lalm.prepare(clip(0.9, seed=3), PROMPT)
    layer = 1
    attn = lalm.layers[layer].self_attn
    check_attention(attn)
    got = capture_stock_qk(lalm, layer, inputs)
    q, k = project_qk(attn, got["states"])  # [H, T, d], [Hkv, T, d]
    t = got["states"].shape[0]
    assert q.shape == (lalm.num_heads, t, attn.head_dim) and k.shape == (got["k"].shape[0], t, attn.head_dim)
    # the stock q/k are post-RoPE: rotate ours with the model's own function and the layer's (cos, sin)
    q_rot, k_rot = rope_fn(attn)(q[None], k[None], got["cos"], got["sin"])
    torch.testing.assert_close(q_rot[0], got["q"], atol=1e-6, rtol=0)
    torch.testing.assert_close(k_rot[0], got["k"], atol=1e-6, rtol=0)
    assert (q_rot - q).abs().max() > 1e-3  # RoPE really moves them (the comparison is not vacuous)


def test_check_attention_names_what_is_missing():
    lalm = tiny("tiny-random-voxtral")
    attn = lalm.layers[0].self_attn

    class NoProj(torch.nn.Module):
        config, head_dim = attn.config, attn.head_dim

    with pytest.raises(AssertionError, match="neither qkv_proj nor q_proj"):
        check_attention(NoProj())
    phi = tiny("tiny-random-phi4mm").layers[0].self_attn
    assert phi.qkv_proj.bias is None and rope_fn(phi).__module__.endswith("phi4_multimodal")
    cos_width = tiny("tiny-random-phi4mm").model.model.rotary_emb.inv_freq.numel() * 2
    assert cos_width == 6 < phi.head_dim  # partial rotary: 3/4 of head_dim 8
