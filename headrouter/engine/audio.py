"""Audio-only feature path: input checks, Whisper log-mel features (never truncated), audio token counts.

Works without torchvision (the stock Qwen2.5-Omni processor needs it). Features of one clip are the frames the
stock processors produce for it (they pad the waveform with zeros to the model window, then mask), without
paying for the padding: a clip is padded only by as much as its last frames can see.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "HOP_LENGTH",
    "MIN_SAMPLES",
    "SAMPLE_RATE",
    "AudioInputError",
    "audio_token_count",
    "check_audio",
    "featurize",
    "featurize_batch",
    "make_feature_extractor",
    "mel_frame_count",
    "tokens_from_frames",
]

SAMPLE_RATE = 16000
HOP_LENGTH = 160  # 100 mel frames per second
N_FFT = 400
MIN_SAMPLES = 640  # 40 ms: one audio token


class AudioInputError(ValueError):
    """Bad audio input; the message names the sample index."""


def tokens_from_frames(frames: int) -> int:
    """Audio tokens for `frames` mel frames: two stride-2 stages, N = ((L-1)//2 + 1 - 2)//2 + 1 (25 per second)."""
    return ((frames - 1) // 2 + 1 - 2) // 2 + 1


def mel_frame_count(num_samples: int) -> int:
    """Mel frames the stock processors count for a clip of `num_samples` (ceil(n / 160))."""
    return math.ceil(num_samples / HOP_LENGTH)


def audio_token_count(num_samples: int) -> int:
    """Audio tokens a clip of `num_samples` samples at 16 kHz becomes."""
    return tokens_from_frames(mel_frame_count(num_samples))


def check_audio(audio, index: int, window_s: float, sample_rate: int | None = None) -> np.ndarray:
    """Validate one clip and return it as contiguous float32 [n]; raise `AudioInputError` naming `index`.

    Rejects: a wrong sample rate (when given), non-1-D arrays, empty clips, NaN/inf samples, clips shorter
    than one audio token (40 ms) and clips longer than `window_s` (never truncated; chunking is the caller's job).
    """
    where = f"audio sample {index}"
    if sample_rate is not None and int(sample_rate) != SAMPLE_RATE:
        raise AudioInputError(f"{where}: sample rate {sample_rate} Hz, expected {SAMPLE_RATE} Hz mono")
    arr = np.asarray(audio)
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise AudioInputError(f"{where}: expected a 1-D mono waveform, got shape {tuple(arr.shape)}")
    if arr.size == 0:
        raise AudioInputError(f"{where}: empty audio")
    if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
        raise AudioInputError(f"{where}: dtype {arr.dtype} is not numeric")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise AudioInputError(f"{where}: contains NaN or inf samples")
    if arr.size < MIN_SAMPLES:
        raise AudioInputError(
            f"{where}: {arr.size / SAMPLE_RATE * 1000:.1f} ms is shorter than one audio token (40 ms)"
        )
    limit = round(window_s * SAMPLE_RATE)
    if arr.size > limit:
        raise AudioInputError(
            f"{where}: {arr.size} samples ({arr.size / SAMPLE_RATE:.2f} s) is longer than the model window of "
            f"{window_s:g} s ({limit} samples); split it into chunks first"
        )
    return arr


def make_feature_extractor(window_s: float = 300.0, feature_size: int = 128):
    """A `WhisperFeatureExtractor` as the Qwen audio checkpoints ship it (16 kHz, 128 mel bins, `window_s` chunk)."""
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(
        feature_size=feature_size,
        sampling_rate=SAMPLE_RATE,
        hop_length=HOP_LENGTH,
        n_fft=N_FFT,
        chunk_length=int(window_s),
        padding_value=0.0,
        return_attention_mask=True,
    )


def featurize(feature_extractor, audio: np.ndarray, total_frames: int | None = None):
    """Log-mel features of one checked clip -> (features [n_mels, F] float32 tensor, valid frames L).

    L = ceil(n / 160). With `total_frames=None`, F = L: the waveform is zero-padded just far enough that the L
    frames equal the stock processor's (which pads to the whole window). With `total_frames` (Qwen2-Audio's
    fixed 3000), the waveform is padded to exactly that many frames, as the stock processor does.
    """
    import torch

    n = int(audio.shape[0])
    frames = mel_frame_count(n)
    if total_frames is not None and frames > total_frames:
        raise AudioInputError(f"{frames} mel frames exceed the encoder's fixed {total_frames}")
    pad_to = total_frames * HOP_LENGTH if total_frames is not None else frames * HOP_LENGTH + N_FFT
    out = feature_extractor(
        [audio],
        sampling_rate=SAMPLE_RATE,
        truncation=False,
        padding="max_length",
        max_length=pad_to,
        return_attention_mask=True,
        return_tensors="np",
    )
    feats = torch.from_numpy(np.asarray(out["input_features"][0], dtype=np.float32))  # [n_mels, pad_to/160]
    if int(out["attention_mask"][0].sum()) != frames:
        raise AssertionError("feature extractor frame count disagrees with ceil(n / 160)")
    keep = total_frames if total_frames is not None else frames
    return feats[:, :keep].contiguous(), frames


def featurize_batch(feature_extractor, audios: list[np.ndarray], total_frames: int | None = None):
    """Features of several checked clips -> (features [B, n_mels, F], feature_attention_mask [B, F] long,
    audio token counts list[int]). Each row equals `featurize` of that clip alone, zero-padded on the right.
    """
    import torch

    rows = [featurize(feature_extractor, a, total_frames) for a in audios]
    width = total_frames if total_frames is not None else max(f.shape[1] for f, _ in rows)
    n_mels = rows[0][0].shape[0]
    feats = torch.zeros(len(rows), n_mels, width)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, (f, frames) in enumerate(rows):
        feats[i, :, : f.shape[1]] = f
        mask[i, :frames] = 1
    return feats, mask, [tokens_from_frames(frames) for _, frames in rows]
