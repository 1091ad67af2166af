"""Log-mel features computed in one batched torch pass on the model's device equal the stock extractors' features of
each clip alone (what the engine computed before, one clip at a time in the stock extractor), for every family."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from headrouter.engine.audio import (
    featurize,
    log_mel,
    make_feature_extractor,
    mel_frame_count,
    tokens_from_frames,
)
from tests.families import FAMILIES
from tests.test_engine import PROMPT, tiny

# lengths in samples: one token (640), whole seconds, one sample past a hop, not a multiple of the hop, 30 s exactly
# (Qwen2-Audio's fixed window: its last frames reflect real audio), past Whisper's default 30-s cut
LENGTHS = [640, 16000, 16001, 7 * 16000 + 37, 480000, 45 * 16000 + 99]


def noise(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    return (0.3 * np.sin(2 * np.pi * (200 + 50 * seed) * t) + 0.05 * rng.standard_normal(n)).astype(
        np.float32
    )


def stock_rows(fe, audios, pad_frames):
    """Today's features: the stock WhisperFeatureExtractor on each clip alone (audio.featurize)."""
    return [featurize(fe, a, total) for a, total in zip(audios, pad_frames)]


ONE_PASS = 1 << 40  # every clip of the call in one STFT (a GPU's default path, forced on the CPU)


@pytest.mark.parametrize("slice_samples", [ONE_PASS, None])
@pytest.mark.parametrize("fixed", [None, 3000, "chunks"])
def test_log_mel_equals_the_stock_extractor_clip_by_clip(fixed, slice_samples):
    fe = make_feature_extractor(300.0)
    lengths = [n for n in LENGTHS if fixed != 3000 or n <= 480000]
    audios = [noise(n, i) for i, n in enumerate(lengths)]
    if fixed == "chunks":  # Voxtral: zero-padded to whole 30-s chunks
        pad = [math.ceil(mel_frame_count(n) / 3000) * 3000 for n in lengths]
    else:
        pad = [fixed] * len(audios)
    feats, frames = log_mel(fe, audios, pad, slice_samples=slice_samples)  # [B, 128, F]
    width = 0
    for i, (ref, ref_frames) in enumerate(stock_rows(fe, audios, pad)):
        assert frames[i] == ref_frames == mel_frame_count(lengths[i])
        own = ref.shape[1]  # the clip's frames, or its fixed padded length
        width = max(width, own)
        torch.testing.assert_close(feats[i, :, :own], ref, atol=1e-4, rtol=0)
        assert not feats[i, :, own:].any()  # zero past the clip's own features, as the batch padding was
    assert feats.shape == (len(audios), 128, width)
    # never truncated to Whisper's default 30 s: 45 s stays 4,500 frames
    assert (45 * 16000 + 99) not in lengths or max(frames) == mel_frame_count(45 * 16000 + 99) == 4501


def test_log_mel_slices_equal_one_pass():
    fe = make_feature_extractor(300.0)
    audios = [noise(n, i) for i, n in enumerate([16001, 7 * 16000 + 37, 3 * 16000, 5 * 16000 + 1])]
    whole, frames = log_mel(fe, audios, [None] * 4, slice_samples=ONE_PASS)
    sliced, frames2 = log_mel(fe, audios, [None] * 4, slice_samples=200_000)  # two or three clips per STFT
    assert frames == frames2
    torch.testing.assert_close(sliced, whole, atol=1e-6, rtol=0)


def test_a_loud_clip_does_not_set_a_quiet_clips_floor():
    # the "max - 8" floor is per clip: in one batch a quiet clip keeps the floor it has alone
    fe = make_feature_extractor(300.0)
    quiet, loud = noise(32000, 1) * 1e-4, noise(48000, 2) * 10
    feats, _ = log_mel(fe, [quiet, loud], [None, None], slice_samples=ONE_PASS)
    ref, _ = featurize(fe, quiet)
    torch.testing.assert_close(feats[0, :, : ref.shape[1]], ref, atol=1e-4, rtol=0)


def todays_features(lalm, audio):
    """The per-clip features the engine computed before batching, by family: the stock extractor on the clip."""
    adapter = lalm.adapter
    fe = lalm.feature_extractor
    if adapter.FAMILY == "phi4_multimodal":
        out = fe([audio], sampling_rate=16000, truncation=False, return_tensors="pt")
        feats = out["audio_input_features"][0].to(torch.float32)  # [F, 80]
        return feats.T, int(feats.shape[0])
    if adapter.FAMILY == "voxtral":
        return featurize(fe, audio, math.ceil(mel_frame_count(audio.size) / 3000) * 3000)
    return featurize(fe, audio, adapter.TOTAL_FRAMES)


@pytest.mark.parametrize("alias", FAMILIES)
def test_engine_features_equal_todays_for_every_family(alias):
    lalm = tiny(alias)
    limit = round(lalm.window_s * 16000)
    lengths = [n for n in LENGTHS if n <= limit] + [
        16000 * 3 + 5
    ]  # two clips of one length (Phi-4 batches them)
    audios = [noise(n, i) for i, n in enumerate(lengths)] + [noise(16000 * 3 + 5, 9)]
    rows, feats, frames = lalm._tokens_and_features(audios, [PROMPT] * len(audios), None)
    assert feats.shape[0] == len(audios) and feats.dtype == torch.float32
    count = getattr(lalm.adapter, "audio_token_count", tokens_from_frames)
    for i, a in enumerate(audios):
        ref, ref_frames = todays_features(lalm, a)
        assert frames[i] == ref_frames, (alias, a.size)
        torch.testing.assert_close(feats[i, :, : ref.shape[1]], ref, atol=1e-4, rtol=0)
        assert not feats[i, :, ref.shape[1] :].any()
        assert int((rows[i] == lalm.token_ids.audio).sum()) == count(ref_frames)
