"""The audio encoder's windows in one attention call per window length (headrouter.engine.encoder) against the
stock per-window loop: full and partial windows, several clips in one batch, silence gating on top."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from headrouter import PruneOptions
from headrouter.engine.encoder import batch_encoder_windows
from tests.test_engine import clip, tiny

# 2-s windows: 4.0 s is two full ones, 5.3 s two full and a partial, 0.7 s one partial
SECONDS = (4.0, 5.3, 0.7, 9.1)


@pytest.mark.parametrize("alias", ["tiny-random", "tiny-random-qwen3-omni"])
def test_batched_windows_equal_the_stock_encoder(alias):
    lalm = tiny(alias)
    assert lalm.window_batching is not None  # both windowed encoders get it when loaded
    audios = [clip(s, seed=i) for i, s in enumerate(SECONDS)]
    prompts = ["describe the sound ."] * len(audios)
    opts = PruneOptions(method="vanilla")
    batched, _ = lalm.prefill_logits(audios, prompts, opts)
    with _stock_encoder(lalm):
        stock, _ = lalm.prefill_logits(audios, prompts, opts)
    torch.testing.assert_close(batched, stock, atol=1e-5, rtol=0)


def _tower(lalm):
    return next(m for m in lalm.model.modules() if type(m).__name__.endswith("AudioEncoder"))


@contextlib.contextmanager
def _stock_encoder(lalm):
    """The block runs the stock per-window attention; the batched one is put back after."""
    lalm.window_batching.remove()
    try:
        yield
    finally:
        lalm.window_batching = batch_encoder_windows(_tower(lalm))


def test_encoder_outputs_equal_window_by_window():
    """The encoder's own output (before the LLM), several clips with full and partial windows."""
    lalm = tiny("tiny-random")
    tower = _tower(lalm)
    batch = lalm.prepare_batch([clip(s, seed=i) for i, s in enumerate(SECONDS)], ["x"] * len(SECONDS))
    mask = batch["feature_attention_mask"]  # [B, F]
    feats = batch["input_features"].permute(0, 2, 1)[mask.bool()].T  # [n_mels, sum F_b]
    with torch.inference_mode():
        batched = tower(feats, feature_lens=mask.sum(-1)).last_hidden_state
        with _stock_encoder(lalm):
            stock = tower(feats, feature_lens=mask.sum(-1)).last_hidden_state
    plan = lalm.window_batching.plan  # the groups of one forward: several lengths, full windows together
    assert batched.shape == stock.shape
    torch.testing.assert_close(batched, stock, atol=1e-5, rtol=0)
    lengths = [length for length, _ in plan(torch.tensor(_cu_seqlens(mask.sum(-1).tolist())))]
    assert (
        lengths[0] == 100 and len(lengths) > 1
    )  # 100 frames after the convs: one call for every full window


def _cu_seqlens(frames):
    """Window boundaries after the encoder's two convs (2-s windows of 200 mel frames -> 100)."""
    bounds = [0]
    for f in frames:
        while f > 0:
            n = min(f, 200)
            bounds.append(bounds[-1] + (n - 1) // 2 + 1)
            f -= n
    return bounds


def test_gated_batch_equals_the_stock_encoder():
    """skip_silence removes empty windows before the encoder; the batched attention serves what is left."""
    lalm = tiny("tiny-random")
    speech = clip(6.0, seed=1)
    gap = np.zeros(4 * 16000, np.float32)
    audios = [np.concatenate([speech, gap, clip(3.1, seed=2)]), clip(5.3, seed=3)]
    opts = PruneOptions(method="headrouter", retain=0.5, skip_silence="energy")
    prompts = ["what is it ?"] * 2
    outs = lalm.generate(audios, prompts, opts, max_new_tokens=1)
    assert outs[0].skipped_s == 4.0 and outs[1].skipped_s == 0.0  # the two empty windows were gated
    batched, _ = lalm.prefill_logits(audios, prompts, opts)
    with _stock_encoder(lalm):
        stock, _ = lalm.prefill_logits(audios, prompts, opts)
    torch.testing.assert_close(batched, stock, atol=1e-5, rtol=0)
