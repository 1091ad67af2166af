"""Pipeline benchmarks: Ray Data end to end vs the model alone, CPU-stage real-time factor, decode memory vs length.

Inputs are synthesized with ffmpeg's lavfi sources (a tone with a slow tremolo over pink noise: never digitally
silent, so every chunk reaches the model) into a scratch folder outside the repository.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["decode_memory", "make_audio", "pipeline_throughput", "stage_rtf"]

log = logging.getLogger("jobs")

REPO = Path(__file__).resolve().parents[1]
# One thread for every numeric library, so "per core" means one core.
ONE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def make_audio(path: str | Path, seconds: float, rate: int = 16000, channels: int = 1) -> Path:
    """Write `seconds` of a non-silent synthetic signal (format from the suffix) with ffmpeg."""
    path = Path(path)
    if path.exists():
        return path
    src = (
        f"sine=frequency=220:sample_rate={rate}:duration={seconds},tremolo=f=2:d=0.8[a];"
        f"anoisesrc=color=pink:amplitude=0.05:sample_rate={rate}:duration={seconds}[b];"
        "[a][b]amix=inputs=2:normalize=0"
    )
    tmp = path.with_name(".tmp-" + path.name)
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-filter_complex", src]
    cmd += ["-ac", str(channels), "-ar", str(rate), str(tmp)]
    subprocess.run(cmd, check=True, timeout=600)
    tmp.replace(path)
    return path


# ---- decode + chunk + features: real-time factor per core ----------------------------------------------
def _stage_child(path: str, window_s: float) -> dict:
    import resource

    import numpy as np
    from pyarrow import fs as pafs

    from headrouter.audio import featurize, make_feature_extractor
    from pipeline.chunking import chunk_stream
    from pipeline.decode import SAMPLE_RATE, decode_stream

    fe = make_feature_extractor(window_s)
    featurize(fe, np.zeros(1600, np.float32))  # one-time setup (mel filters) outside the measurement
    wall0, cpu0 = time.perf_counter(), time.process_time()
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    samples = chunks = frames = 0
    for chunk in chunk_stream(decode_stream(pafs.LocalFileSystem(), path), window_s):
        _, n = featurize(fe, chunk.audio)  # [n_mels, L] features of the chunk
        samples, chunks, frames = samples + chunk.audio.size, chunks + 1, frames + n
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = time.process_time() - cpu0 + (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
    wall = time.perf_counter() - wall0
    audio_s = samples / SAMPLE_RATE
    return {"audio_s": audio_s, "chunks": chunks, "wall_s": wall, "cpu_s": cpu, "mel_frames": frames}


def stage_rtf(folder: Path, seconds: float, window_s: float = 300.0) -> list[dict]:
    """Decode + chunk + Whisper features of one file per format, single-threaded, in a fresh process each."""
    rows = []
    for name, rate, channels in (("speech44k.mp3", 44100, 2), ("speech16k.flac", 16000, 1)):
        path = make_audio(folder / f"{int(seconds)}s-{name}", seconds, rate, channels)
        r = _child("stage", {"path": str(path), "window_s": window_s}, env=ONE_THREAD)
        r.update(
            format=name.split(".")[-1],
            source=f"{rate} Hz, {channels} ch",
            rtf_wall=r["audio_s"] / r["wall_s"],
            rtf_cpu=r["audio_s"] / r["cpu_s"],
        )
        rows.append(r)
    return rows


# ---- a worker's decode + chunk memory vs input length --------------------------------------------------
def _memory_child(path: str, window_s: float) -> dict:
    import pyarrow as pa

    from pipeline.decode import DecodeLimits
    from pipeline.graph import decode_and_chunk

    src = {"run_id": "bench", "attempt_id": "a", "id": "src", "uri": path, "task": "asr"}
    batch = pa.Table.from_pylist([dict(src, question=None, choices=None, error=None)])
    import gc

    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM: measure the stage, not the imports
    base = _status_kib("VmRSS")
    rows = audio_s = 0
    errors = []
    for table in decode_and_chunk(batch, window_s, DecodeLimits(), None):  # the pipeline's CPU stage itself
        row = table.to_pylist()[0]
        rows += 1
        audio_s += row["end_s"] - row["start_s"]
        if row["status"] != "ok":
            errors.append(row["error"])
    return {
        "chunks": rows,
        "audio_s": audio_s,
        "errors": errors,
        "rss_before_bytes": base * 1024,
        "peak_rss_bytes": _status_kib("VmHWM") * 1024,
    }


def decode_memory(folder: Path, minutes: tuple[float, ...], window_s: float = 300.0) -> list[dict]:
    """Peak RSS of the decode-and-chunk stage (pipeline.graph.decode_and_chunk) per input length."""
    rows = []
    for m in minutes:
        path = make_audio(folder / f"{m:g}min.flac", m * 60)
        r = _child("memory", {"path": str(path), "window_s": window_s})
        r.update(minutes=m, file_bytes=path.stat().st_size)
        rows.append(r)
    base = rows[0]["peak_rss_bytes"]
    for r in rows:
        r["peak_vs_first"] = r["peak_rss_bytes"] / base
    return rows


# ---- Ray Data end to end vs the model alone --------------------------------------------------------------
def _model_alone(folder: Path, model: str, method: str, retain: float, batch_size: int, max_new: int) -> dict:
    from pyarrow import fs as pafs

    from headrouter import PruneOptions, load_lalm
    from pipeline.chunking import chunk_stream
    from pipeline.decode import SAMPLE_RATE, decode_stream
    from pipeline.graph import model_window_s
    from workers.inference import ASR_PROMPT

    t0 = time.perf_counter()
    lalm = load_lalm(model)
    load_s = time.perf_counter() - t0
    window = min(lalm.window_s, model_window_s(model))
    chunks = [
        c.audio
        for p in sorted(folder.iterdir())
        for c in chunk_stream(decode_stream(pafs.LocalFileSystem(), str(p)), window)
    ]
    opts = PruneOptions(method=method, retain=retain)
    t0 = time.perf_counter()
    for i in range(0, len(chunks), batch_size):
        part = chunks[i : i + batch_size]
        lalm.generate(part, [ASR_PROMPT] * len(part), opts, max_new_tokens=max_new)
    wall = time.perf_counter() - t0
    audio_s = sum(c.size for c in chunks) / SAMPLE_RATE
    return {"audio_s": audio_s, "chunks": len(chunks), "wall_s": wall, "load_s": load_s}


def pipeline_throughput(
    folder: Path,
    files: int,
    seconds: float,
    model: str = "tiny-random",
    method: str = "headrouter",
    retain: float = 0.4,
    actors: tuple[int, ...] = (1, 2),
    max_new_tokens: int = 16,
) -> dict:
    """Audio seconds per wall second: the model alone (generate on the chunks) vs `pipeline.run_job`."""
    import ray

    from pipeline import RunOptions, run_job

    inputs = folder / f"pipeline-{files}x{int(seconds)}s"
    inputs.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        make_audio(inputs / f"talk{i:02d}.flac", seconds)
    batch_size = 4
    alone = _child(
        "alone",
        {
            "folder": str(inputs),
            "model": model,
            "method": method,
            "retain": retain,
            "batch_size": batch_size,
            "max_new": max_new_tokens,
        },
    )
    alone["audio_s_per_wall_s"] = alone["audio_s"] / alone["wall_s"]
    t0 = time.perf_counter()
    ray.init(
        address="local",  # a fresh embedded cluster, never one named by RAY_ADDRESS
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        logging_level=logging.WARNING,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
    )
    ray_init_s = time.perf_counter() - t0
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    runs = []
    try:
        for n in actors:
            with tempfile.TemporaryDirectory(prefix="hr-bench-out-") as out:
                opts = RunOptions(
                    input=str(inputs),
                    output=out,
                    model=model,
                    method=method,
                    retain=retain,
                    workers=(n, n),
                    batch_size=batch_size,
                    max_new_tokens=max_new_tokens,
                    progress_s=3600.0,
                )
                t0 = time.perf_counter()
                summary = run_job(opts)
                wall = time.perf_counter() - t0
            runs.append(
                {
                    "actors": n,
                    "wall_s": wall,
                    "audio_s": summary.audio_s,
                    "chunks": summary.chunks,
                    "files_ok": summary.files_ok,
                    "files_failed": summary.files_failed,
                    "audio_s_per_wall_s": summary.audio_s / wall,
                    "overhead_vs_model": wall / alone["wall_s"] - 1.0,
                    "overhead_vs_model_and_load": wall / (alone["wall_s"] + alone["load_s"]) - 1.0,
                }
            )
    finally:
        ray.shutdown()
    return {
        "model": model,
        "method": method,
        "retain": retain,
        "files": files,
        "seconds_per_file": seconds,
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "ray_init_s": ray_init_s,
        "model_alone": alone,
        "ray": runs,
    }


# ---- subprocess plumbing -------------------------------------------------------------------------------------
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


_CHILDREN = {"stage": _stage_child, "memory": _memory_child, "alone": _model_alone}


def _child(kind: str, kwargs: dict, env: dict | None = None, timeout_s: float = 900) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.bench_pipeline", kind, json.dumps(kwargs)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=str(REPO),
        env={**os.environ, **(env or {})},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"bench child {kind} failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    _kind, _args = sys.argv[1], json.loads(sys.argv[2])
    if _kind == "alone":
        _args["folder"] = Path(_args["folder"])
    print(json.dumps(_CHILDREN[_kind](**_args)))
