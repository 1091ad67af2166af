"""A corpus of hostile and odd audio inputs, generated on the fly (nothing binary is committed).

Each case names the file, its bytes (or a writer for large ones) and what the pipeline must make of it:
`errors` empty means the source is valid but odd and must come out 'ok' (with `duration_s` when given);
otherwise the files/ row must be 'error' with an error kind among `errors`.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import soundfile as sf

SR = 16000


@dataclass(frozen=True)
class Hostile:
    kind: str  # short tag, unique
    name: str  # file name (may hold spaces, unicode, a newline)
    make: Callable[[str], None]  # writes the file at the given path
    errors: tuple[str, ...] = ()  # acceptable error kinds; () -> must be 'ok'
    duration_s: float | None = None  # expected duration of an 'ok' source (within 0.1 s)
    chunks: int | None = None  # expected chunk count (for long sources)


def tone(seconds: float, sr: int = SR, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A non-silent test signal ([n] or [n, channels] float32 in [-0.5, 0.5])."""
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    x = 0.3 * np.sin(2 * np.pi * (220 + 200 * t) * t) + 0.05 * rng.standard_normal(t.size)
    x = x.astype(np.float32)
    return np.repeat(x[:, None], channels, axis=1) if channels > 1 else x


def _bytes(data: bytes) -> Callable[[str], None]:
    def write(path: str) -> None:
        with open(path, "wb") as f:
            f.write(data)

    return write


def _sf(x: np.ndarray, sr: int, subtype: str, fmt: str = "WAV") -> Callable[[str], None]:
    def write(path: str) -> None:
        sf.write(path, x, sr, subtype=subtype, format=fmt)

    return write


def wav_bytes(x: np.ndarray, sr: int = SR, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, subtype=subtype, format="WAV")
    return buf.getvalue()


def wav_header(data_bytes: int, sr: int = SR, channels: int = 1, bits: int = 16) -> bytes:
    """A canonical 44-byte PCM WAV header declaring `data_bytes` of sample data."""
    align = channels * bits // 8
    riff = min(0xFFFFFFFF, 36 + data_bytes)
    fmt = struct.pack("<HHIIHH", 1, channels, sr, min(0xFFFFFFFF, sr * align), align, bits)
    return (
        b"RIFF"
        + struct.pack("<I", riff)
        + b"WAVEfmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + (struct.pack("<I", min(0xFFFFFFFF, data_bytes)))
    )


def _ffmpeg(x: np.ndarray, args: list[str], suffix: str) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.wav"), os.path.join(tmp, "out" + suffix)
        sf.write(src, x, SR, subtype="PCM_16")
        cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", src, *args, dst]
        subprocess.run(cmd, check=True, timeout=60)
        with open(dst, "rb") as f:
            return f.read()


def _garbage_mp3(path: str) -> None:
    data = bytearray(_ffmpeg(tone(3.0), ["-c:a", "libmp3lame", "-b:a", "64k"], ".mp3"))
    rng = np.random.default_rng(1)
    for start in (len(data) // 4, len(data) // 2):  # two stretches of garbage in place of frames
        data[start : start + 600] = rng.integers(0, 256, 600, dtype=np.uint8).tobytes()
    _bytes(bytes(data))(path)


def _truncated_m4a(path: str) -> None:
    data = _ffmpeg(tone(3.0), ["-c:a", "aac", "-b:a", "48k"], ".m4a")  # moov atom at the end
    _bytes(data[: len(data) // 2])(path)


def _silent_hour(path: str) -> None:
    # Digital silence compresses to almost nothing in FLAC: about 100 KB for the hour, written block by block.
    with sf.SoundFile(path, "w", samplerate=SR, channels=1, subtype="PCM_16", format="FLAC") as f:
        block = np.zeros(SR * 60, np.int16)  # [960000]
        for _ in range(60):
            f.write(block)


def _square(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SR))
    return np.where((t // 18) % 2 == 0, 32767, -32768).astype(np.int16)  # full scale, clipped


def _nan_wav(value: float) -> bytes:
    x = tone(1.0)
    x[SR // 2 : SR // 2 + 10] = value
    return wav_bytes(x, subtype="FLOAT")


def corpus() -> list[Hostile]:
    """The hostile-input cases (each kind once)."""
    rng = np.random.default_rng(0)
    good = wav_bytes(tone(2.0))
    flac = io.BytesIO()
    sf.write(flac, tone(4.0), SR, format="FLAC")
    short = ("invalid_audio",)  # decodes, but the model's 40 ms minimum rejects it
    undecodable = ("decode_error",)
    return [
        Hostile("zero_bytes", "zero bytes.wav", _bytes(b""), ("empty",)),
        Hostile("header_only", "header_only.wav", _bytes(wav_header(0)), ("empty", "decode_error")),
        Hostile("truncated_wav", "truncated.wav", _bytes(good[: 44 + (len(good) - 44) // 2]), duration_s=1.0),
        Hostile(
            "truncated_flac",
            "truncated.flac",
            _bytes(flac.getvalue()[: len(flac.getvalue()) // 2]),
            ("decode_error",),
            duration_s=None,
        ),
        Hostile(
            "random_wav", "random.wav", _bytes(rng.integers(0, 256, 50_000, np.uint8).tobytes()), undecodable
        ),
        Hostile(
            "random_ogg", "random.ogg", _bytes(rng.integers(0, 256, 20_000, np.uint8).tobytes()), undecodable
        ),
        Hostile("text_mp3", "readme.mp3", _bytes(b"This is not audio.\n" * 200), undecodable),
        Hostile("nan_float", "nan.wav", _bytes(_nan_wav(float("nan"))), ("invalid_samples",)),
        Hostile("inf_float", "inf.wav", _bytes(_nan_wav(float("inf"))), ("invalid_samples",)),
        Hostile(
            "giga_header", "giga_header.wav", _bytes(wav_header(4_000_000_000) + b"\x00\x40" * 20), short
        ),
        Hostile(
            "absurd_rate",
            "absurd_rate.wav",
            _bytes(wav_header(4_000_000_000, sr=4_000_000_000, channels=6) + b"\x01" * 4000),
            undecodable,
        ),
        Hostile("one_sample", "one_sample.wav", _bytes(wav_bytes(np.array([0.5], np.float32))), short),
        Hostile("pcm_u8", "pcm_u8.wav", _sf(tone(1.5), SR, "PCM_U8"), duration_s=1.5),
        Hostile("pcm_24", "pcm_24.wav", _sf(tone(1.5), SR, "PCM_24"), duration_s=1.5),
        Hostile("float_32", "float_32.wav", _sf(tone(1.5), SR, "FLOAT"), duration_s=1.5),
        Hostile("six_channels", "six_channels.wav", _sf(tone(1.5, channels=6), SR, "PCM_16"), duration_s=1.5),
        Hostile("rate_8k", "rate_8k.wav", _sf(tone(1.5, sr=8000), 8000, "PCM_16"), duration_s=1.5),
        Hostile(
            "rate_96k", "rate_96k.flac", _sf(tone(1.5, sr=96000), 96000, "PCM_24", "FLAC"), duration_s=1.5
        ),
        Hostile("silent_hour", "silent_hour.flac", _silent_hour, ("silent",), chunks=12),
        Hostile("clipped_square", "clipped_square.wav", _sf(_square(1.5), SR, "PCM_16"), duration_s=1.5),
        Hostile("garbage_mp3", "garbage_frames.mp3", _garbage_mp3, (), duration_s=None),
        Hostile("truncated_m4a", "truncated.m4a", _truncated_m4a, undecodable),
        Hostile("flac_named_wav", "really_flac.wav", _bytes(flac.getvalue()), duration_s=4.0),
        Hostile("name_spaces", "name with  spaces .wav", _bytes(good), duration_s=2.0),
        Hostile("name_unicode", "ünïcødé 音声 🎧.wav", _bytes(good), duration_s=2.0),
        Hostile("name_newline", "new\nline\r.wav", _bytes(good), duration_s=2.0),
        Hostile("name_dots", "x..y...wav", _bytes(good), duration_s=2.0),
    ]


def write_corpus(folder: str, cases: list[Hostile] | None = None) -> dict[str, Hostile]:
    """Write every case into `folder`; returns absolute path -> case."""
    os.makedirs(folder, exist_ok=True)
    out = {}
    for case in cases or corpus():
        path = os.path.join(folder, case.name)
        case.make(path)
        out[os.path.abspath(path)] = case
    return out
