"""Where audio comes from: a local folder, an s3://bucket/prefix, or a manifest (JSONL, CSV, Parquet).

Listing yields metadata only (URI, id, question); audio bytes are read later by the decode stage.
Credentials come from the standard AWS chain (environment, config files, instance role): never from arguments.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass

from pyarrow import fs as pafs

from pipeline.options import RunFailed, UsageError

AUDIO_EXTENSIONS = (
    ".wav",
    ".flac",
    ".ogg",
    ".opus",
    ".mp3",
    ".m4a",
    ".aac",
    ".mp4",
    ".webm",
    ".aif",
    ".aiff",
)
MANIFEST_EXTENSIONS = (".jsonl", ".csv", ".parquet")


@dataclass(frozen=True)
class Source:
    id: str
    uri: str  # "s3://bucket/key" or an absolute local path
    question: str | None = None
    choices: tuple[str, ...] | None = None
    error: str = ""  # set when the listing itself already knows the source is unusable
    answer: str | None = None  # a manifest row's reference answer (jobs.tune scores against it)


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def make_filesystem(uri: str, s3_endpoint: str | None = None) -> pafs.FileSystem:
    """The pyarrow filesystem for a URI; S3 credentials come from the standard chain, never from here."""
    if not is_s3(uri):
        return pafs.LocalFileSystem()
    kwargs: dict = {
        "region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        "connect_timeout": 10,
        "request_timeout": 60,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=8),
    }
    endpoint = s3_endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        if not host:
            scheme, host = "https", endpoint
        kwargs.update(endpoint_override=host.rstrip("/"), scheme=scheme)
    return pafs.S3FileSystem(**kwargs)


@functools.lru_cache(maxsize=4)
def source_filesystem(s3: bool, s3_endpoint: str | None = None) -> pafs.FileSystem:
    """One filesystem per kind (local or S3 at `s3_endpoint`) for reading many sources, made once per process."""
    return make_filesystem("s3://x" if s3 else "/", s3_endpoint)


def fs_path(uri: str) -> str:
    """The path a pyarrow filesystem expects: 'bucket/key' for S3, an absolute path for local files."""
    if is_s3(uri):
        return uri[len("s3://") :].rstrip("/")
    return os.path.abspath(uri[len("file://") :] if uri.startswith("file://") else uri)


def to_uri(fs: pafs.FileSystem, path: str) -> str:
    return f"s3://{path}" if isinstance(fs, pafs.S3FileSystem) else path


def list_sources(uri: str, fs: pafs.FileSystem, question: str | None = None) -> Iterator[Source]:
    """Every source under `uri` (folder, prefix or manifest) in a stable order."""
    path = fs_path(uri)
    try:
        info = fs.get_file_info(path)
    except OSError as e:
        raise RunFailed(f"cannot reach input {uri}: {_one_line(e)}") from None
    if info.type == pafs.FileType.NotFound:
        raise UsageError(f"input not found: {uri}")
    if info.type == pafs.FileType.File:
        if path.lower().endswith(MANIFEST_EXTENSIONS):
            yield from _manifest_sources(uri, fs, path, question)
            return
        if path.lower().endswith(AUDIO_EXTENSIONS):
            yield Source(id=to_uri(fs, path), uri=to_uri(fs, path), question=question)
            return
        raise UsageError(
            f"input {uri} is neither a folder, an audio file nor a manifest (.jsonl/.csv/.parquet)"
        )
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    except OSError as e:
        raise RunFailed(f"cannot list input {uri}: {_one_line(e)}") from None
    for f in sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path):
        name = posixpath.basename(f.path)
        if name.startswith(".") or not name.lower().endswith(AUDIO_EXTENSIONS):
            continue
        src = to_uri(fs, f.path)
        yield Source(id=src, uri=src, question=question)


def _manifest_sources(uri: str, fs: pafs.FileSystem, path: str, question: str | None) -> Iterator[Source]:
    base = posixpath.dirname(path)
    remote = isinstance(fs, pafs.S3FileSystem)
    seen: set[str] = set()
    for n, rec in enumerate(_manifest_records(fs, path)):
        audio = str(rec.get("audio") or "").strip()
        if not audio:
            raise UsageError(f"manifest {uri} row {n + 1}: missing 'audio'")
        audio_uri, error = _resolve_audio(audio, base, remote)
        sid = str(rec.get("id") or audio_uri)
        if sid in seen:
            raise UsageError(f"manifest {uri}: duplicate id {sid!r}; give each row a unique 'id'")
        seen.add(sid)
        choices = rec.get("choices")
        if isinstance(choices, str):
            choices = json.loads(choices) if choices.strip().startswith("[") else choices.split("|")
        yield Source(
            id=sid,
            uri=audio_uri,
            question=(rec.get("question") or question),
            choices=tuple(str(c) for c in choices) if choices else None,
            error=error,
            answer=str(rec["answer"]) if rec.get("answer") not in (None, "") else None,
        )


def _resolve_audio(audio: str, base: str, remote_manifest: bool) -> tuple[str, str]:
    """Absolute URI for a manifest entry, and an error when its scheme is not allowed."""
    if is_s3(audio):
        return audio, ""
    if "://" in audio and not audio.startswith("file://"):
        return audio, f"forbidden: scheme of {audio.split('://')[0]!r} not allowed (s3:// or local paths)"
    if remote_manifest:
        if audio.startswith(("/", "file://")) or ".." in audio.split("/"):
            return audio, "forbidden: local paths are not allowed in an S3 manifest"
        return f"s3://{posixpath.join(base, audio)}", ""
    local = audio[len("file://") :] if audio.startswith("file://") else audio
    return os.path.abspath(os.path.join(base, local)), ""


def _manifest_records(fs: pafs.FileSystem, path: str) -> Iterator[dict]:
    low = path.lower()
    try:
        if low.endswith(".parquet"):
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(fs.open_input_file(path))
            if "audio" not in pf.schema_arrow.names:
                raise UsageError(f"manifest {path} has no 'audio' column")
            for batch in pf.iter_batches(batch_size=4096):
                yield from batch.to_pylist()
            return
        with fs.open_input_stream(path) as raw:
            text = io.TextIOWrapper(raw, encoding="utf-8")
            if low.endswith(".csv"):
                yield from csv.DictReader(text)
                return
            for n, line in enumerate(text):
                if line.strip():
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise UsageError(f"manifest {path} line {n + 1}: not JSON ({e.msg})") from None
                    if not isinstance(rec, dict):
                        raise UsageError(f"manifest {path} line {n + 1}: expected an object")
                    yield rec
    except (UnicodeDecodeError, OSError) as e:
        raise UsageError(f"cannot read manifest {path}: {_one_line(e)}") from None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300]
