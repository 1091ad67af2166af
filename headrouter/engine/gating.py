"""Window gating: skip empty 2-s windows before the audio encoder, keeping every kept token's time position.

Qwen2.5-Omni's audio encoder cuts the mel frames into windows of `n_window * 2` frames (2 s) that it encodes
independently (both convolutions and the sinusoidal position embedding restart per window, attention is
block-diagonal), then pools to 25 tokens per second: 50 tokens per full window. Dropping whole windows from the
features therefore leaves every other window's tokens unchanged. The prompt then holds placeholders for the kept
windows only, and the kept tokens get explicit position ids: their positions in the ungated prompt, on all three
mRoPE rows ([3, 1, T']), so generated tokens continue after the original, ungated length.

Detectors (`PruneOptions.skip_silence`): "energy" marks a window empty when its loudest 10-ms frame is more than
`ENERGY_MARGIN_DB` below the chunk's loudest frame (relative to the chunk, so a chunk of quiet noise keeps its
noise: an acoustic question may be about it); "vad" marks a window empty when Silero VAD finds no speech in it
(speech-only archives). A chunk whose windows are all empty is `silent`: no model call.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from headrouter.engine.audio import HOP_LENGTH, N_FFT, SAMPLE_RATE, tokens_from_frames
from headrouter.options import SKIP_SILENCE

__all__ = [
    "ENERGY_MARGIN_DB",
    "SKIP_SILENCE",
    "Gate",
    "detect_empty",
    "energy_empty",
    "gate_batch",
    "gate_inputs",
    "vad_empty",
    "window_tokens",
]

# A window is empty when its loudest frame is this far below the chunk's loudest frame. On tiny-synth's test split
# (content at -32..-15 dBFS RMS over -60..-45 dBFS noise and digital silence) 30 dB removes 80% of the windows
# without content and only windows that overlap the content by < 0.1 s (the speech synthesizer's own pauses).
ENERGY_MARGIN_DB = 30.0


@dataclass(frozen=True)
class Gate:
    """What gating did to one clip: `windows` encoder windows, `empty` the indices of those removed, the audio
    seconds and tokens they held."""

    windows: int = 0
    empty: tuple[int, ...] = ()
    skipped_s: float = 0.0
    skipped_tokens: int = 0

    @property
    def silent(self) -> bool:
        return self.windows > 0 and len(self.empty) == self.windows


def window_tokens(frames: int, window_frames: int) -> list[int]:
    """Audio tokens of each encoder window of a clip of `frames` mel frames (50 per full 2-s window)."""
    full, rest = divmod(frames, window_frames)
    counts = [tokens_from_frames(window_frames)] * full + ([tokens_from_frames(rest)] if rest else [])
    # pooling pairs never straddle a window boundary: a full window has an even number of frames after conv1
    assert sum(counts) == tokens_from_frames(frames), "window token counts disagree with the clip's"
    return counts


def _frame_energy_db(audio: np.ndarray, frames: int) -> np.ndarray:
    """Energy (dB) of each 10-ms hop of the clip: [frames], -inf on digital silence. A window's own samples only:
    the half STFT frame its edge mel frames borrow from a neighbour is encoded by that neighbour too."""
    x = np.zeros(frames * HOP_LENGTH)
    x[: min(audio.size, x.size)] = audio[: x.size].astype(np.float64) ** 2
    power = x.reshape(frames, HOP_LENGTH).mean(axis=1)  # [frames]
    with np.errstate(divide="ignore"):
        return 10 * np.log10(power)


def energy_empty(
    audio: np.ndarray, frames: int, window_frames: int, margin_db: float = ENERGY_MARGIN_DB
) -> np.ndarray:
    """[W] bool: windows whose loudest frame is more than `margin_db` below the chunk's loudest frame."""
    db = _frame_energy_db(audio, frames)  # [F]
    n = -(-frames // window_frames)
    loudest = np.array([db[w * window_frames : (w + 1) * window_frames].max() for w in range(n)])  # [W]
    ref = float(db.max())
    if not np.isfinite(ref):  # digital silence throughout
        return np.ones(n, dtype=bool)
    return loudest < ref - margin_db


@functools.cache
def _silero():
    try:
        from silero_vad import load_silero_vad
    except ImportError:
        raise ValueError(
            "skip_silence='vad' needs the silero-vad package (pip install silero-vad==6.2.3)"
        ) from None
    return load_silero_vad()


def vad_empty(audio: np.ndarray, frames: int, window_frames: int) -> np.ndarray:
    """[W] bool: windows in which Silero VAD finds no speech (its default threshold and padding)."""
    import torch
    from silero_vad import get_speech_timestamps

    with torch.inference_mode():
        clip = torch.from_numpy(np.array(audio, dtype=np.float32))  # a writable copy
        speech = get_speech_timestamps(clip, _silero(), sampling_rate=SAMPLE_RATE)
    n = -(-frames // window_frames)
    empty = np.ones(n, dtype=bool)
    span = window_frames * HOP_LENGTH  # samples per window
    for seg in speech:  # {"start": sample, "end": sample}
        first = max(int(seg["start"]) - N_FFT // 2, 0) // span
        last = min((int(seg["end"]) + N_FFT // 2) // span, n - 1)
        empty[first : last + 1] = False
    return empty


def detect_empty(mode: str, audio: np.ndarray, frames: int, window_frames: int) -> np.ndarray:
    """[W] bool empty windows of one clip for `mode` in `SKIP_SILENCE` ("off": none)."""
    n = -(-frames // window_frames)
    if mode == "off":
        return np.zeros(n, dtype=bool)
    if mode == "energy":
        return energy_empty(audio, frames, window_frames)
    if mode == "vad":
        return vad_empty(audio, frames, window_frames)
    raise ValueError(f"skip_silence must be one of {SKIP_SILENCE}, got {mode!r}")


def gate_inputs(input_ids, features, frames: int, empty: np.ndarray, audio_id: int, window_frames: int):
    """Remove the empty windows of one clip -> (input_ids [1, T'], features [n_mels, F'], F', position_ids).

    input_ids [1, T] holds the clip's N audio placeholders in one run; features [n_mels, >= frames].
    position_ids [3, 1, T'] are the kept tokens' positions in the ungated prompt (None when nothing is removed:
    the inputs are returned unchanged, the stock path).
    """
    import torch

    if not empty.any():
        return input_ids, features, frames, None
    counts = window_tokens(frames, window_frames)
    audio_pos = (input_ids[0] == audio_id).nonzero().flatten()  # [N]
    if audio_pos.numel() != sum(counts):
        raise ValueError(f"prompt holds {audio_pos.numel()} audio placeholders, the windows {sum(counts)}")
    token_keep = torch.from_numpy(np.repeat(~empty, counts))  # [N]
    keep = torch.ones(input_ids.shape[1], dtype=torch.bool)
    keep[audio_pos] = token_keep
    frame_keep = torch.from_numpy(np.repeat(~empty, window_frames)[:frames])  # [F]
    positions = keep.nonzero().flatten()  # [T'] original positions of what stays
    kept_frames = int(frame_keep.sum())
    gated = features[:, :frames][:, frame_keep]  # [n_mels, F']
    return input_ids[:, keep], gated, kept_frames, positions.view(1, 1, -1).expand(3, 1, -1).clone()


def gate_batch(batch: dict, audios, mode: str, audio_id: int, pad_id: int, window_frames: int):
    """Gate every clip of a prepared Qwen2.5-Omni batch -> (batch' or None, gates [B], live row indices).

    batch: input_ids / attention_mask [B, T] left-padded, input_features [B, n_mels, F], feature_attention_mask
    [B, F] (right-padded). Silent clips (every window empty) leave the batch; batch' is None when none is left.
    When a clip loses windows, batch' carries position_ids [3, B', T'] (left padding: 0) with every kept token at
    its position in the ungated prompt; when no clip does, the batch comes back unchanged (the stock path).
    """
    import torch

    ids, attention = batch["input_ids"], batch["attention_mask"]
    feats, fmask = batch["input_features"], batch["feature_attention_mask"]
    rows, gates = [], []
    for b, audio in enumerate(audios):
        frames = int(fmask[b].sum())
        empty = detect_empty(mode, np.asarray(audio, dtype=np.float32).reshape(-1), frames, window_frames)
        skipped = float(np.repeat(empty, window_frames)[:frames].sum()) * HOP_LENGTH / SAMPLE_RATE
        tokens = int(np.dot(empty, window_tokens(frames, window_frames)))
        gate = Gate(int(empty.size), tuple(int(w) for w in np.flatnonzero(empty)), skipped, tokens)
        gates.append(gate)
        if not gate.silent:
            own = ids[b, ids.shape[1] - int(attention[b].sum()) :][None].cpu()  # [1, T_b]
            rows.append((b, *gate_inputs(own, feats[b].cpu(), frames, empty, audio_id, window_frames)))
    live = [r[0] for r in rows]
    if not rows:
        return None, gates, live
    if len(rows) == len(audios) and all(r[4] is None for r in rows):
        return batch, gates, live
    width = max(int(r[1].shape[1]) for r in rows)
    longest = max(r[3] for r in rows)
    n = len(rows)
    out_ids = torch.full((n, width), pad_id, dtype=ids.dtype)  # [B', T']
    out_attention = torch.zeros(n, width, dtype=attention.dtype)  # [B', T']
    positions = torch.zeros(3, n, width, dtype=torch.long)  # [3, B', T']
    out_feats = torch.zeros(n, feats.shape[1], longest, dtype=feats.dtype)  # [B', n_mels, F']
    out_fmask = torch.zeros(n, longest, dtype=fmask.dtype)  # [B', F']
    for j, (_, row_ids, row_feats, frames, pos) in enumerate(rows):
        t = int(row_ids.shape[1])
        out_ids[j, width - t :] = row_ids[0]
        out_attention[j, width - t :] = 1
        positions[:, j, width - t :] = torch.arange(t) if pos is None else pos[:, 0]
        out_feats[j, :, :frames] = row_feats[:, :frames]
        out_fmask[j, :frames] = 1
    device = ids.device
    gated = dict(batch)
    gated.update(input_ids=out_ids, attention_mask=out_attention, position_ids=positions,
                 input_features=out_feats, feature_attention_mask=out_fmask)  # fmt: skip
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in gated.items()}, gates, live
