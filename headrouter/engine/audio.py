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
    "log_mel",
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


def log_mel(
    feature_extractor,
    audios: list[np.ndarray],
    pad_frames: list[int | None],
    device="cpu",
    slice_samples: int | None = None,
):
    """Whisper log-mel features of several checked clips, batched in torch on `device` ->
    (features [B, n_mels, F] float32 on `device`, valid frames per clip list[int]).

    Row i equals `featurize(feature_extractor, audios[i], pad_frames[i])`, the stock extractor's frames of that
    clip alone (never truncated), zero-padded on the right to the longest row: each clip is zero-padded to its
    own stock length and reflect-padded at both ends as `torch.stft(center=True)` pads it alone, and the
    "max - 8" floor comes from that clip's own frames. Clips go through the STFT together in slices of at most
    `slice_samples` padded samples (at least one clip each); by default FEATURE_SLICE_SAMPLES on a GPU (bounds
    the complex spectrum's memory) and one clip at a time on a CPU, where that measured faster.
    """
    import torch

    hop, n_fft = int(feature_extractor.hop_length), int(feature_extractor.n_fft)
    frames = [mel_frame_count(int(a.shape[0])) for a in audios]
    pad_to, keep = [], []  # per clip: samples the stock extractor pads to, frames it returns
    for f, total in zip(frames, pad_frames):
        if total is not None and f > total:
            raise AudioInputError(f"{f} mel frames exceed the encoder's fixed {total}")
        pad_to.append(total * hop if total is not None else f * hop + n_fft)
        keep.append(total if total is not None else f)
    if slice_samples is None:  # on a CPU one clip per STFT call measured faster (bench.features)
        slice_samples = 0 if torch.device(device).type == "cpu" else FEATURE_SLICE_SAMPLES
    slices, start = [], 0
    while start < len(audios):
        stop = start + 1
        while stop < len(audios) and max(pad_to[start : stop + 1]) * (stop + 1 - start) <= slice_samples:
            stop += 1
        slices.append((start, stop))
        start = stop
    if len(slices) == 1:
        return _log_mel_slice(feature_extractor, audios, pad_to, keep, device), frames
    out = torch.zeros(len(audios), feature_extractor.feature_size, max(keep), device=device)  # [B, n_mels, F]
    for start, stop in slices:
        part = _log_mel_slice(
            feature_extractor, audios[start:stop], pad_to[start:stop], keep[start:stop], device
        )
        out[start:stop, :, : part.shape[-1]] = part
    return out, frames


FEATURE_SLICE_SAMPLES = 1 << 25  # ~35 min of 16-kHz audio per GPU STFT call: ~0.34 GB of complex64 spectrum


def _log_mel_slice(fe, audios, pad_to: list[int], keep: list[int], device):
    """log-mel [B, n_mels, max(keep)] of clips each zero-padded to its pad_to samples, row i zero past keep[i]
    (see log_mel); a view in frames-major memory ([B, F, n_mels] contiguous)."""
    import torch

    n_fft, hop = int(fe.n_fft), int(fe.hop_length)
    half = n_fft // 2
    width = max(pad_to)
    host = np.zeros((len(audios), width), np.float32)  # [B, W] each clip zero-padded to the longest
    for i, a in enumerate(audios):
        host[i, : a.shape[0]] = a
    wave = torch.from_numpy(host).to(device)  # [B, W]
    if fe.dither != 0.0:  # as the stock extractor: noise over the padded clip (its own length)
        inside = torch.arange(width, device=device) < torch.tensor(pad_to, device=device)[:, None]  # [B, W]
        wave = wave + fe.dither * torch.randn_like(wave) * inside
    # stft(center=True) of each clip alone reflect-pads it by n_fft/2 at both of its own ends
    x = torch.nn.functional.pad(wave, (half, half))  # [B, W + n_fft]
    x[:, :half] = wave[:, 1 : half + 1].flip(-1)
    for i, p in enumerate(pad_to):
        x[i, half + p : p + n_fft] = wave[i, p - half - 1 : p - 1].flip(-1)
    window = torch.hann_window(n_fft, device=device)
    spec = torch.stft(
        x, n_fft, hop, window=window, center=False, return_complex=True
    )  # [B, n_freq, W/hop + 1]
    # frames-major in memory, so the transposed view is contiguous rows; the stock drops the last frame
    power = spec.transpose(1, 2)[:, :-1].abs().pow_(2)  # [B, W/hop, n_freq]
    mel = torch.from_numpy(np.asarray(fe.mel_filters, np.float32)).to(device)  # [n_freq, n_mels]
    log_spec = (power @ mel).clamp_(min=1e-10).log10_()  # [B, W/hop, n_mels]
    # the "max - 8" floor from each clip's own pad_to / hop frames only
    frame_max = log_spec.amax(dim=2)  # [B, W/hop]
    own = (
        torch.arange(frame_max.shape[1], device=device) < torch.tensor(pad_to, device=device)[:, None] // hop
    )
    peak = frame_max.masked_fill_(~own, float("-inf")).amax(dim=1)  # [B]
    log_spec = torch.maximum(log_spec, (peak - 8.0)[:, None, None], out=log_spec).add_(4.0).div_(4.0)
    log_spec = log_spec[:, : max(keep)]  # [B, F, n_mels]
    for i, k in enumerate(keep):
        log_spec[i, k:] = 0.0
    return log_spec.transpose(1, 2)  # [B, n_mels, F]


def featurize_batch(
    feature_extractor, audios: list[np.ndarray], total_frames: int | None = None, device="cpu"
):
    """Features of several checked clips -> (features [B, n_mels, F] float32 on `device`,
    feature_attention_mask [B, F] long, audio token counts list[int]). Each row equals `featurize` of that clip
    alone, zero-padded on the right (`log_mel`)."""
    import torch

    feats, frames = log_mel(feature_extractor, audios, [total_frames] * len(audios), device)
    mask = (
        torch.arange(feats.shape[-1], device=feats.device)[None, :]
        < torch.tensor(frames, device=feats.device)[:, None]
    ).long()
    return feats, mask, [tokens_from_frames(f) for f in frames]
