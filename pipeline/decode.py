"""Decode untrusted media to 16 kHz mono float32, block by block, within limits.

soundfile (libsndfile) first: wav/flac/ogg/opus/mp3 read in blocks straight from the (remote) file and resampled
by a streaming soxr resampler. Anything soundfile cannot open goes to an ffmpeg subprocess writing raw f32le to a
pipe. Either way memory stays bounded by one block, whatever the file's length.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from pyarrow import fs as pafs

SAMPLE_RATE = 16000
MAX_BLOCK_BYTES = 32 << 20  # one decoded block ([frames, channels] float32) at most


class DecodeError(Exception):
    """A source that cannot become audio. `kind` is a short stable tag; str() is 'kind: detail'."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


@dataclass(frozen=True)
class DecodeLimits:
    max_duration_s: float = 12 * 3600.0
    timeout_s: float = 3600.0
    max_input_bytes: int = 8 << 30
    block_s: float = 10.0


def decode_stream(
    fs: pafs.FileSystem, path: str, limits: DecodeLimits = DecodeLimits()
) -> Iterator[np.ndarray]:
    """Yield blocks of 16 kHz mono float32 samples ([n] each); raise DecodeError for unusable sources."""
    info = _stat(fs, path)
    if info.size == 0:
        raise DecodeError("empty", "file has zero bytes")
    if info.size is not None and info.size > limits.max_input_bytes:
        raise DecodeError("too_large", f"{info.size} bytes > limit of {limits.max_input_bytes}")
    deadline = time.monotonic() + limits.timeout_s
    budget = int(limits.max_duration_s * SAMPLE_RATE)  # output-size limit, in samples
    produced = 0
    blocks = _soundfile_blocks(fs, path, limits, deadline)
    if blocks is None:
        blocks = _ffmpeg_blocks(fs, path, limits, deadline)
    try:
        for block in blocks:  # block: [n] float32
            if not np.isfinite(block).all():
                raise DecodeError("invalid_samples", "audio contains NaN or infinite samples")
            produced += block.size
            if produced > budget:
                raise DecodeError("too_long", f"longer than the limit of {limits.max_duration_s:.0f} s")
            if time.monotonic() > deadline:
                raise DecodeError("timeout", f"decoding took longer than {limits.timeout_s:.0f} s")
            if block.size:
                yield block
    finally:
        blocks.close()
    if produced == 0:
        raise DecodeError("empty", "no audio samples")


def _stat(fs: pafs.FileSystem, path: str) -> pafs.FileInfo:
    try:
        info = fs.get_file_info(path)
    except OSError as e:
        raise _os_error(e) from None
    if info.type == pafs.FileType.NotFound:
        raise DecodeError("not_found", "source vanished or does not exist")
    if info.type != pafs.FileType.File:
        raise DecodeError("not_a_file", "source is not a regular file")
    return info


def _open(fs: pafs.FileSystem, path: str):
    try:
        return fs.open_input_file(path)
    except OSError as e:
        raise _os_error(e) from None


def _os_error(e: OSError) -> DecodeError:
    text = " ".join(str(e).split())
    low = text.lower()
    if (
        isinstance(e, PermissionError)
        or "access denied" in low
        or "accessdenied" in low
        or "access_denied" in low  # pyarrow's S3 errors: "AWS Error ACCESS_DENIED during GetObject"
        or "forbidden" in low
    ):
        return DecodeError("permission_denied", "not allowed to read the source")
    if isinstance(e, FileNotFoundError) or "not found" in low or "nosuchkey" in low:
        return DecodeError("not_found", "source vanished or does not exist")
    return DecodeError("read_error", text[:200])


def _soundfile_blocks(fs, path, limits: DecodeLimits, deadline: float) -> Iterator[np.ndarray] | None:
    """A block generator when libsndfile recognises the file, else None (caller falls back to ffmpeg)."""
    import soundfile as sf

    f = _ReadGuard(_open(fs, path))
    try:
        snd = sf.SoundFile(f)
    except Exception:  # libsndfile cannot parse it: let ffmpeg try, unless reading itself failed
        f.close()
        f.check()
        return None
    if snd.samplerate <= 0 or snd.channels <= 0:
        snd.close()
        f.close()
        raise DecodeError("decode_error", "invalid sample rate or channel count in header")
    return _read_soundfile(snd, f, limits)


class _ReadGuard:
    """A source file handed to libsndfile that retries transient read errors from the same offset and
    remembers a lasting one. soundfile's I/O callbacks swallow exceptions, so a failed read (the store gone
    half way) would look like the end of the file and a truncated source would come out 'ok'. The S3 client
    retries 5xx answers itself but not every broken transfer (a body cut short fails with INTERNAL_FAILURE)."""

    RETRIES = 3

    def __init__(self, f):
        self.f, self.error = f, None

    def _guard(self, fn, *args):
        for attempt in range(self.RETRIES + 1):
            pos = self.f.tell()
            try:
                return fn(*args)
            except OSError as e:
                if attempt == self.RETRIES or _os_error(e).kind != "read_error":
                    self.error = self.error or e
                    raise
                time.sleep(0.2 * 2**attempt)
                self.f.seek(pos)

    def read(self, n=-1):
        return self._guard(self.f.read, n)

    def readinto(self, buf):
        return self._guard(self.f.readinto, buf)

    def seek(self, offset, whence=0):
        return self._guard(self.f.seek, offset, whence)

    def tell(self):
        return self.f.tell()

    def close(self):
        self.f.close()

    def check(self) -> None:
        if self.error is not None:
            raise _os_error(self.error)


def _read_soundfile(snd, f: _ReadGuard, limits: DecodeLimits) -> Iterator[np.ndarray]:
    import soxr

    sr = snd.samplerate
    resampler = soxr.ResampleStream(sr, SAMPLE_RATE, 1, dtype="float32") if sr != SAMPLE_RATE else None
    # A block is limited in bytes too: 10 s of 256 channels at 48 kHz would be half a gigabyte of float32.
    blocksize = max(1024, min(int(limits.block_s * sr), MAX_BLOCK_BYTES // (4 * snd.channels)))
    try:
        while True:
            try:
                data = snd.read(blocksize, dtype="float32", always_2d=True)  # [n, channels]
            except Exception as e:
                f.check()
                raise DecodeError("decode_error", " ".join(str(e).split())[:200]) from None
            f.check()  # a short block may be a failed read, not the end of the file
            mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]  # [n]
            last = data.shape[0] < blocksize
            if resampler is not None:
                if not np.isfinite(mono).all():  # soxr would smear NaN over the block; report it as such
                    raise DecodeError("invalid_samples", "audio contains NaN or infinite samples")
                mono = resampler.resample_chunk(np.ascontiguousarray(mono), last=last)
            yield np.ascontiguousarray(mono, dtype=np.float32)
            if last:
                return
    finally:
        snd.close()
        f.close()


def _ffmpeg_blocks(fs, path, limits: DecodeLimits, deadline: float) -> Iterator[np.ndarray]:
    if shutil.which("ffmpeg") is None:
        raise DecodeError("decode_error", "format not supported by libsndfile and ffmpeg is not installed")
    with tempfile.TemporaryDirectory(prefix="hr-decode-") as tmp:
        if isinstance(fs, pafs.LocalFileSystem):
            local = path
        else:  # ffmpeg needs a seekable input for mp4/m4a (moov atom at the end): spool to local disk
            local = os.path.join(tmp, "input")
            _spool(fs, path, local, limits.max_input_bytes)
        yield from _run_ffmpeg(local, limits, deadline, tmp)


def _spool(fs, path: str, dest: str, max_bytes: int) -> None:
    n = 0
    with _open(fs, path) as raw, open(dest, "wb") as out:
        src = _ReadGuard(raw)
        while True:
            try:
                chunk = src.read(1 << 20)
            except OSError as e:
                raise _os_error(e) from None
            if not chunk:
                return
            n += len(chunk)
            if n > max_bytes:
                raise DecodeError("too_large", f"more than {max_bytes} bytes")
            out.write(chunk)


def _run_ffmpeg(local: str, limits: DecodeLimits, deadline: float, tmp: str) -> Iterator[np.ndarray]:
    # "file:" stops ffmpeg from reading a protocol or an option out of a hostile file name.
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-i", "file:" + os.path.abspath(local)]
    cmd += ["-map", "0:a:0", "-vn", "-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "f32le", "pipe:1"]
    err_path = os.path.join(tmp, "stderr")
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
    timer = threading.Timer(max(0.0, deadline - time.monotonic()), proc.kill)
    timer.start()
    block_bytes = int(limits.block_s * SAMPLE_RATE) * 4
    pending = b""
    try:
        while True:
            data = proc.stdout.read(block_bytes)
            if not data:
                break
            data = pending + data
            usable = len(data) - len(data) % 4
            pending = data[usable:]
            yield np.frombuffer(data[:usable], dtype="<f4").copy()
        rc = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    if rc != 0:
        if time.monotonic() >= deadline:
            raise DecodeError("timeout", f"decoding took longer than {limits.timeout_s:.0f} s")
        with open(err_path, "rb") as f:
            lines = [ln for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
        detail = lines[-1].strip() if lines else f"ffmpeg exited with code {rc}"
        detail = detail.replace("file:" + os.path.abspath(local) + ": ", "").replace(
            os.path.abspath(local), "<input>"
        )
        if "matches no streams" in detail:
            raise DecodeError("no_audio", "no audio stream in the file")
        raise DecodeError("decode_error", f"not decodable as audio (ffmpeg: {detail[:200]})")
