"""Cut a stream of 16 kHz samples into chunks no longer than the model's window, in quiet places.

A cut is placed at the quietest point (smoothed frame energy) of the last `search_s` seconds before the window
ends, so words are rarely split. Chunks are contiguous: chunk k+1 starts at the sample where chunk k ends.
About two windows of samples are held in memory at a time, whatever the stream's length.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from pipeline.decode import SAMPLE_RATE


@dataclass(frozen=True)
class Chunk:
    index: int
    start: int  # first sample (16 kHz, from the start of the source)
    audio: np.ndarray  # [n] float32
    last: bool

    @property
    def end(self) -> int:
        return self.start + self.audio.size


def chunk_stream(
    blocks: Iterable[np.ndarray],
    window_s: float,
    search_s: float | None = None,
    min_tail_s: float = 1.0,
    sample_rate: int = SAMPLE_RATE,
) -> Iterator[Chunk]:
    """Chunks of at most `window_s` seconds covering every sample of `blocks`, in order, the last one flagged."""
    win = int(window_s * sample_rate)
    search = int((search_s if search_s is not None else min(30.0, window_s / 5)) * sample_rate)
    search = max(1, min(search, win - 1))
    tail = min(int(min_tail_s * sample_rate), win // 4)
    # Cuts during the stream leave >= tail samples behind, so the chunk holding the final samples is the
    # only one flagged last, and no chunk needs to be held back to learn that.
    pending: list[np.ndarray] = []  # blocks not yet joined: joining only at cut time keeps copies O(n)
    size = 0
    start = 0
    index = 0
    for block in blocks:
        pending.append(np.asarray(block, np.float32))
        size += pending[-1].size
        if size < win + tail:
            continue
        buf = np.concatenate(pending)
        pending = []
        while buf.size >= win + tail:
            cut = quiet_cut(buf, win - search, win, sample_rate)
            yield Chunk(index, start, buf[:cut], False)
            index, start, buf = index + 1, start + cut, buf[cut:].copy()
        pending, size = [buf], buf.size
    buf = np.concatenate(pending) if pending else np.zeros(0, np.float32)
    if buf.size > win:  # end of stream with window < len < window + tail
        cut = quiet_cut(buf, max(win - search, buf.size - win), min(win, buf.size - tail), sample_rate)
        yield Chunk(index, start, buf[:cut], False)
        index, start, buf = index + 1, start + cut, buf[cut:]
    if buf.size:
        yield Chunk(index, start, buf, True)


def quiet_cut(x: np.ndarray, lo: int, hi: int, sample_rate: int = SAMPLE_RATE) -> int:
    """The sample index in [lo, hi] at the centre of the quietest ~200 ms stretch of `x` ([n] float32)."""
    lo, hi = max(1, lo), min(hi, x.size)
    if hi <= lo:
        return hi
    frame = sample_rate // 100  # 10 ms frames
    n = (hi - lo) // frame
    if n < 3:
        return hi
    seg = x[lo : lo + n * frame].reshape(n, frame)  # [n, frame]
    energy = (seg.astype(np.float64) ** 2).mean(axis=1)  # [n]
    smooth = np.convolve(energy, np.ones(20) / 20, mode="same") if n >= 20 else energy  # ~200 ms
    # Among near-equal minima prefer the latest (longer chunks, fewer cuts).
    best = np.flatnonzero(smooth <= smooth.min() * (1 + 1e-6) + 1e-12)[-1]
    return lo + int(best) * frame + frame // 2
