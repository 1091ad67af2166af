"""`jobs.run --dry-run`: what a run would process, from the listing and the audio headers, before any compute.

Durations come from container headers (soundfile; ffprobe for local files soundfile cannot read); nothing is
decoded, no Ray starts, nothing is written. A source whose duration cannot be read is counted as unknown.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
from dataclasses import dataclass, field

from pipeline.options import RunOptions
from pipeline.sources import fs_path, is_s3, list_sources, make_filesystem, source_filesystem

__all__ = ["ArchivePlan", "plan_archive"]

log = logging.getLogger("pipeline")


@dataclass(frozen=True)
class ArchivePlan:
    """The archive as the run would see it: sources, seconds, chunks, audio tokens (model's rate)."""

    model: str
    retain: float
    method: str
    layer: int
    window_s: float
    max_new_tokens: int
    sources: int = 0
    unknown: int = 0  # sources whose duration no header gave
    audio_s: float = 0.0
    chunk_s: list[float] = field(
        default_factory=list
    )  # every chunk's length, longest window first per source
    audio_tokens: int = 0
    tokens_per_s: float = 25.0

    @property
    def chunks(self) -> int:
        return len(self.chunk_s)


def plan_archive(opts: RunOptions) -> ArchivePlan:
    """List `opts.input` and read each source's duration from its header; chunks are cut at the model's window
    (or --window-s), the way the pipeline cuts them (quiet points move a cut by at most a few seconds)."""
    from headrouter.engine.audio import HOP_LENGTH, SAMPLE_RATE
    from headrouter.engine.loading import adapter_for_model

    adapter = adapter_for_model(opts.model, opts.s3_endpoint)
    window = min(float(adapter.WINDOW_S), opts.window_s or math.inf)
    count = adapter.audio_token_count
    fs = make_filesystem(opts.input, opts.s3_endpoint)
    sources = unknown = tokens = 0
    total = 0.0
    chunks: list[float] = []
    for src in list_sources(opts.input, fs, opts.question):
        sources += 1
        seconds = None if src.error else _duration(src.uri, opts.s3_endpoint)
        if seconds is None:
            unknown += 1
            continue
        total += seconds
        whole, rest = divmod(seconds, window)
        for s in [window] * int(whole) + ([rest] if rest > 0 else []):
            chunks.append(s)
            tokens += count(math.ceil(s * SAMPLE_RATE / HOP_LENGTH))
    one_second = count(SAMPLE_RATE // HOP_LENGTH * 60) / 60
    return ArchivePlan(
        model=opts.model, retain=opts.prune.retain, method=opts.prune.method, layer=opts.prune.layer,
        window_s=window, max_new_tokens=opts.max_new_tokens, sources=sources, unknown=unknown, audio_s=total,
        chunk_s=chunks, audio_tokens=tokens, tokens_per_s=one_second,
    )  # fmt: skip


def _duration(uri: str, s3_endpoint: str | None) -> float | None:
    import soundfile as sf

    fs = source_filesystem(is_s3(uri), s3_endpoint)
    try:
        with fs.open_input_file(fs_path(uri)) as f:
            info = sf.info(f)
        return float(info.frames) / float(info.samplerate)
    except Exception as e:  # not a soundfile format, or unreadable
        log.debug("no soundfile header for %s: %s", uri, e)
    if is_s3(uri):
        return None  # ffprobe reads local files only; the dry run never downloads audio
    try:
        out = subprocess.run(
            ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "json", uri],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        return float(json.loads(out.stdout)["format"]["duration"])
    except (OSError, ValueError, KeyError, subprocess.TimeoutExpired):
        return None
