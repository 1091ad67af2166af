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

from bench.prefill import status_kib

__all__ = ["decode_memory", "make_audio", "pipeline_throughput", "stage_rtf"]

log = logging.getLogger("bench")

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


def save_bench_model(path: Path, hidden: int = 256, layers: int = 12, seed: int = 0) -> Path:
    """A model folder load_lalm reads (config, safetensors, tokenizer, feature extractor): the scaled 3B-shaped
    thinker of the prefill benchmark, so the pipeline's model does real work per chunk (tiny-random does
    ~0.1 s per 2-minute chunk, which leaves nothing to compare the pipeline's fixed costs with)."""
    import torch
    from transformers import GenerationConfig, Qwen2_5OmniThinkerForConditionalGeneration

    from bench.prefill import scaled_3b_shape, thinker_config
    from headrouter.engine.audio import make_feature_extractor
    from headrouter.engine.tiny import build_word_tokenizer, special_token_ids

    if (path / "config.json").exists():
        return path
    t = scaled_3b_shape(hidden, layers).text
    tok = build_word_tokenizer()
    config = thinker_config(t, tok, len(tok))
    torch.manual_seed(seed)
    model = Qwen2_5OmniThinkerForConditionalGeneration(config).eval()
    ids = special_token_ids(tok)
    model.generation_config = GenerationConfig(
        eos_token_id=[ids["eos_token_id"], ids["endoftext_token_id"]], pad_token_id=ids["pad_token_id"]
    )
    model.save_pretrained(path)
    tok.save_pretrained(path)
    make_feature_extractor(window_s=300.0).save_pretrained(path)
    return path


# ---- decode + chunk + features: real-time factor per core ----------------------------------------------
def _stage_child(path: str, window_s: float) -> dict:
    import resource

    import numpy as np
    from pyarrow import fs as pafs

    from headrouter.engine.audio import featurize, make_feature_extractor
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
    base = status_kib("VmRSS")
    rows = audio_s = 0
    errors, trace = [], []
    for table in decode_and_chunk(batch, window_s, DecodeLimits(), None):  # the pipeline's CPU stage itself
        row = table.to_pylist()[0]
        trace.append(status_kib("VmRSS") // 1024)  # MiB resident after each chunk: flat, or growing?
        rows += 1
        audio_s += row["end_s"] - row["start_s"]
        if row["status"] != "ok":
            errors.append(row["error"])
    return {
        "chunks": rows,
        "audio_s": audio_s,
        "errors": errors,
        "rss_before_bytes": base * 1024,
        "peak_rss_bytes": status_kib("VmHWM") * 1024,
        "rss_after_chunk_mib": trace,
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
    import torch
    from pyarrow import fs as pafs

    from headrouter import PruneOptions, load_lalm
    from headrouter.engine.loading import model_window_s
    from headrouter.engine.prompt import ASR_PROMPT
    from pipeline.chunking import chunk_stream
    from pipeline.decode import SAMPLE_RATE, decode_stream

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
    model_s = 0.0
    for i in range(0, len(chunks), batch_size):
        part = chunks[i : i + batch_size]
        outs = lalm.generate(part, [ASR_PROMPT] * len(part), opts, max_new_tokens=max_new)
        model_s += sum(o.prefill_s + o.decode_s for o in outs)
    wall = time.perf_counter() - t0
    audio_s = sum(c.size for c in chunks) / SAMPLE_RATE
    return {
        "audio_s": audio_s,
        "chunks": len(chunks),
        "wall_s": wall,
        "load_s": load_s,
        "model_s": model_s,
        "torch_threads": torch.get_num_threads(),
    }


class _ModelTime:
    """run_job observer: model time (prefill + decode) the actors report per chunk."""

    def __init__(self):
        self.model_s = 0.0

    def observe(self, row: dict) -> None:
        self.model_s += (row.get("prefill_s") or 0.0) + (row.get("decode_s") or 0.0)


def pipeline_throughput(
    folder: Path,
    files: int,
    seconds: float,
    model: str = "tiny-random",
    method: str = "headrouter",
    retain: float = 0.4,
    actors: tuple[int, ...] = (1, 2),
    max_new_tokens: int = 16,
    marginal: bool = True,
) -> dict:
    """Audio seconds per wall second: the model alone (generate on the chunks) vs `pipeline.run_job`.

    Runs `files` and 2 x `files` inputs so the fixed cost of a run (actor start, model load) separates from
    the marginal cost per audio second: marginal overhead = (pipeline wall(2N) - wall(N)) / (model alone
    wall(2N) - wall(N)) - 1, with 1 actor. More actors run on the 2N set (on the N set without `marginal`).
    """
    import ray

    from headrouter.options import PruneOptions
    from pipeline import RunOptions, run_job

    big = folder / f"pipeline-{2 * files}x{int(seconds)}s"
    small = folder / f"pipeline-{files}x{int(seconds)}s"
    big.mkdir(parents=True, exist_ok=True)
    small.mkdir(parents=True, exist_ok=True)
    for i in range(2 * files):
        path = make_audio(big / f"talk{i:02d}.flac", seconds)
        if i < files and not (small / path.name).exists():
            (small / path.name).symlink_to(path)
    batch_size = 2
    alone = {}
    sets = (("small", small), ("big", big)) if marginal else (("small", small),)
    for name, inputs in sets:
        args = {"folder": str(inputs), "model": model, "method": method, "retain": retain}
        # one torch thread: what an inference actor gets (Ray sets OMP_NUM_THREADS=1 under 2 CPUs)
        r = _child("alone", dict(args, batch_size=batch_size, max_new=max_new_tokens), env=ONE_THREAD)
        alone[name] = dict(r, audio_s_per_wall_s=r["audio_s"] / r["wall_s"])
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
    plan = [(1, "small")] + [(n, "big" if marginal else "small") for n in actors if marginal or n != 1]
    runs = []
    try:
        for n, name in plan:
            with tempfile.TemporaryDirectory(prefix="hr-bench-out-") as out:
                opts = RunOptions(
                    input=str(small if name == "small" else big),
                    output=out,
                    model=model,
                    prune=PruneOptions(method=method, retain=retain),
                    workers=(n, n),
                    batch_size=batch_size,
                    max_new_tokens=max_new_tokens,
                    progress_s=3600.0,
                )
                seen = _ModelTime()
                t0 = time.perf_counter()
                summary = run_job(opts, observer=seen)
                wall = time.perf_counter() - t0
            ref = alone[name]
            runs.append(
                {
                    "actors": n,
                    "inputs": name,
                    "files": files * (1 if name == "small" else 2),
                    "wall_s": wall,
                    "audio_s": summary.audio_s,
                    "chunks": summary.chunks,
                    "files_ok": summary.files_ok,
                    "files_failed": summary.files_failed,
                    "audio_s_per_wall_s": summary.audio_s / wall,
                    "overhead_vs_model": wall / ref["wall_s"] - 1.0,
                    "overhead_vs_model_and_load": wall / (ref["wall_s"] + ref["load_s"]) - 1.0,
                    "model_s_in_actors": seen.model_s,
                    # load-normalized: wall per second of model work (prefill + decode, as the actors and the
                    # model-alone run each measured it under the same load), pipeline vs model alone
                    "overhead_normalized": (wall / seen.model_s) / (ref["wall_s"] / ref["model_s"]) - 1.0
                    if seen.model_s > 0 and ref["model_s"] > 0
                    else None,
                }
            )
    finally:
        ray.shutdown()
    d_pipe = runs[1]["wall_s"] - runs[0]["wall_s"] if marginal else None
    d_alone = alone["big"]["wall_s"] - alone["small"]["wall_s"] if marginal else None
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
        "fixed_cost_s": runs[0]["wall_s"] - d_pipe if marginal else None,  # wall(N) minus its marginal part
        "marginal_overhead": d_pipe / d_alone - 1.0 if marginal and d_alone > 0 else None,
    }


# ---- subprocess plumbing -------------------------------------------------------------------------------------
_CHILDREN = {"stage": _stage_child, "memory": _memory_child, "alone": _model_alone}


def _child(kind: str, kwargs: dict, env: dict | None = None, timeout_s: float = 900) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.pipeline", kind, json.dumps(kwargs)],
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
