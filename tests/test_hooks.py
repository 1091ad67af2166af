"""Hooks: the probe has no RoPE, FastV's query has it; HeadRouter never materializes a full attention matrix."""

from __future__ import annotations

import sys

import pytest
import torch

import headrouter.engine.hooks as hooks
from headrouter import PruneOptions
from headrouter.attention import project_qk
from headrouter.engine.hooks import AudioTokenIds, apply_pruning, audio_spans
from headrouter.routing import HeadRouter
from tests.families import FAMILIES
from tests.test_engine import PROMPT, clip, position_arg, text_rotary, tiny


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE by hand: x [..., d], cos/sin [..., d] (rotate_half convention)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def vanilla_layer_states(lalm, audio, layer_index):
    """(normalized input of layer `layer_index` [T, D], its cached post-RoPE keys [Hkv, T, d]) from an unhooked run."""
    inputs = lalm.prepare(audio, PROMPT)
    got = {}
    norm = lalm.layers[layer_index].input_layernorm

    def keep(module, args, out):  # returns None: the output is left alone
        got.setdefault("normed", out[0].clone())

    h = norm.register_forward_hook(keep)
    try:
        with torch.inference_mode():
            out = lalm.model(**inputs, use_cache=True)
    finally:
        h.remove()
    return inputs, got["normed"], out.cache.layers[layer_index].keys[0]


@pytest.mark.parametrize("alias", FAMILIES)
@torch.inference_mode()
def test_probe_has_no_rope_and_fastv_query_has_it(monkeypatch, alias):
    lalm = tiny(alias)
    audio = clip(1.4, seed=6)
    layer = 2
    inputs, normed, cached_keys = vanilla_layer_states(lalm, audio, layer - 1)
    attn = lalm.layers[layer - 1].self_attn
    heads, kv, d = lalm.num_heads, attn.config.num_key_value_heads, attn.head_dim
    ids = inputs["input_ids"][0]
    prunable, query = audio_spans(ids, lalm.token_ids, PruneOptions())

    captured = {}
    real_select = HeadRouter.select

    def spy_select(self, q_text, k_audio, retain):
        captured["q_text"], captured["k_audio"] = q_text.clone(), k_audio.clone()
        return real_select(self, q_text, k_audio, retain)

    real_fastv = hooks.fastv_importance

    def spy_fastv(q_last, keys, audio_index):
        captured["q_last"], captured["keys"] = q_last.clone(), keys.clone()
        return real_fastv(q_last, keys, audio_index)

    rope_calls = []
    module = sys.modules[type(attn).__module__]
    real_rope = module.apply_rotary_pos_emb

    def spy_rope(*args, **kwargs):
        rope_calls.append(args[0].shape)
        return real_rope(*args, **kwargs)

    monkeypatch.setattr(HeadRouter, "select", spy_select)
    monkeypatch.setattr(hooks, "fastv_importance", spy_fastv)

    # HeadRouter: q/k projections with bias, no RoPE, KV heads repeated to one row per query head.
    monkeypatch.setattr(module, "apply_rotary_pos_emb", spy_rope)
    lalm.prefill_logits(audio, PROMPT, PruneOptions(method="headrouter", retain=0.5, layer=layer))
    q_all, k_all = project_qk(attn, normed)  # [H, T, d], [Hkv, T, d]: the stock projections (+ bias, norms)
    q_hand = q_all[:, query]  # [H, Nt, d]
    k_hand = k_all[:, prunable].repeat_interleave(heads // kv, 0)  # [H, Na, d]
    assert captured["q_text"].shape == (heads, query.numel(), d)
    assert captured["k_audio"].shape == (heads, prunable.numel(), d)
    torch.testing.assert_close(captured["q_text"], q_hand, atol=1e-6, rtol=0)
    torch.testing.assert_close(captured["k_audio"], k_hand, atol=1e-6, rtol=0)
    bias = getattr(getattr(attn, "q_proj", None), "bias", None)
    if bias is not None:
        assert bias.abs().sum() > 0  # the bias is really there to be included
    assert len(rope_calls) == lalm.num_layers  # the model's own RoPE, one call per layer; none from the probe

    # FastV: the last token's query WITH RoPE at its original position, against layer M-1's cached keys.
    rope_calls.clear()
    lalm.prefill_logits(audio, PROMPT, PruneOptions(method="fastv", retain=0.5, layer=layer))
    assert len(rope_calls) == lalm.num_layers + 1  # the model's layers + FastV's query
    t = ids.numel()
    cos, sin = text_rotary(lalm)(normed[None], position_arg(lalm, torch.arange(t)))  # [1, T, r]
    q_last = q_all[:, -1]  # [H, d]
    r = cos.shape[-1]  # rotary width (< d with partial rotary)
    q_rot = torch.cat([rotate(q_last[:, :r], cos[0, -1], sin[0, -1]), q_last[:, r:]], dim=-1)
    torch.testing.assert_close(captured["q_last"], q_rot, atol=1e-5, rtol=0)
    assert (captured["q_last"] - q_last).abs().max() > 1e-3  # RoPE at position T-1 really moves it
    torch.testing.assert_close(
        captured["keys"], cached_keys.repeat_interleave(heads // kv, 0), atol=0, rtol=0
    )


@pytest.mark.parametrize("alias", FAMILIES)
def test_headrouter_runs_on_sdpa_without_eager_attention(monkeypatch, alias):
    lalm = tiny(alias)
    audio = clip(2.0, seed=7)
    module = sys.modules[type(lalm.layers[0].self_attn).__module__]

    def forbidden(*args, **kwargs):
        raise AssertionError("eager attention (full attention matrix) was called")

    monkeypatch.setattr(module, "eager_attention_forward", forbidden)
    sdpa_shapes = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy_sdpa(q, k, v, *args, **kwargs):
        sdpa_shapes.append((tuple(q.shape), tuple(k.shape)))
        return real_sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy_sdpa)
    for method in ("headrouter", "headrouter-noprefilter", "fastv", "dart"):
        sdpa_shapes.clear()
        _, record = lalm.prefill_logits(audio, PROMPT, PruneOptions(method=method, retain=0.3, layer=2))
        t, kept = record.seq_len, record.keep.numel()
        decoder = [s for s in sdpa_shapes if s[0][1] == lalm.num_heads and s[0][2] in (t, kept)]
        assert [s[0][2] for s in decoder] == [t, t, kept, kept], method  # layers >= M attend over kept only
    out = lalm.generate([audio], [PROMPT], PruneOptions(retain=0.3), max_new_tokens=3, min_new_tokens=3)[0]
    assert len(out.token_ids) == 3


def test_apply_pruning_refuses_layer_zero_and_last_and_restores_the_model():
    lalm = tiny()
    ids = lalm.token_ids
    for bad in (lalm.num_layers, lalm.num_layers + 3):
        with pytest.raises(ValueError, match="pruning layer"):
            apply_pruning(
                lalm.model, lalm.layers, lalm.final_norm, ids, PruneOptions(method="frame", layer=bad)
            )
    with pytest.raises(ValueError, match="never prune at layer 0"):
        PruneOptions(layer=0)
    with pytest.raises(ValueError, match="HeadRouter"):
        apply_pruning(lalm.model, lalm.layers, lalm.final_norm, ids, PruneOptions(method="headrouter"))
    audio = clip(1.0, seed=8)
    before, _ = lalm.prefill_logits(audio, PROMPT)
    with apply_pruning(
        lalm.model, lalm.layers, lalm.final_norm, ids, PruneOptions(method="frame", retain=0.2)
    ):
        pruned, _ = lalm.prefill_logits(audio, PROMPT)
    after, _ = lalm.prefill_logits(audio, PROMPT)
    assert not torch.equal(before, pruned) and torch.equal(before, after)
    assert all(not layer._forward_pre_hooks for layer in lalm.layers)


def test_audio_spans_markers_and_query_sets():
    ids = AudioTokenIds(audio=5, bos=4, eos=6)
    seq = torch.tensor([2, 13, 4, 5, 5, 5, 6, 82, 15, 3, 2, 14])
    prunable, query = audio_spans(seq, ids, PruneOptions())
    assert prunable.tolist() == [3, 4, 5] and query.tolist() == [7, 8, 9, 10, 11]
    prunable, query = audio_spans(seq, ids, PruneOptions(prune_audio_markers=True, query_tokens="all_text"))
    assert prunable.tolist() == [2, 3, 4, 5, 6] and query.tolist() == [0, 1, 7, 8, 9, 10, 11]
    assert audio_spans(torch.tensor([2, 13, 3]), ids, PruneOptions()) is None
    with pytest.raises(ValueError, match="contiguous"):
        audio_spans(torch.tensor([4, 5, 9, 5, 6]), ids, PruneOptions())
