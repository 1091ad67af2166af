"""`python -m jobs.bench batch`: what batching the engine buys, and whether pruning turns into throughput.

Four measurements, each a ratio taken in the same run (the machine is shared and noisy):
1. engine: chunks per second and decode tokens per second at batch 1, 4, 16 for vanilla and HeadRouter 0.4, on
   60-s and 300-s chunks, with the scaled 3B-shaped thinker (bench.pipeline.save_bench_model); every sample
   decodes the same number of tokens (min = max new tokens); outputs compared with batch 1;
2. the pipeline end to end: `pipeline.run_job` over an archive of full-window chunks, serial engine (batch 1)
   vs batched, same model, same outputs;
3. the KV-token budget: how many chunks fit one `--max-batch-tokens` with and without pruning (workers.batching);
4. tiny-synth: one generate call over 8 clips of mixed lengths vs 8 calls of one clip.
CPU runs use one torch thread and process CPU time; on CUDA, wall time and peak allocated memory.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("bench")

__all__ = ["batch_targets", "render_batch", "run_batch"]


def _clips(seconds: float, n: int) -> list[np.ndarray]:
    """Speech-like test signals: a few harmonics with a syllable-rate envelope and noise, one seed per clip."""
    t = np.arange(int(seconds * 16000)) / 16000
    out = []
    for i in range(n):
        rng = np.random.default_rng(i)
        f0 = 110 + 15 * i
        voice = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in (1, 2, 3))
        envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t + i)
        out.append((0.2 * voice * envelope + 0.02 * rng.standard_normal(t.shape)).astype(np.float32))
    return out


class _Clock:
    """Process CPU time on a one-thread CPU run, wall time (synchronized) on CUDA."""

    def __init__(self, cuda: bool):
        self.cuda = cuda

    def now(self) -> float:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            return time.perf_counter()
        return time.process_time()


def engine_rows(
    lalm,
    seconds: list[float],
    batches: list[int],
    chunks: int,
    new_tokens: int,
    each_batch_once: bool = False,
) -> list[dict]:
    """Per chunk length, method and batch size: chunks/s, audio s/s, decode tokens/s, KV bytes of the largest call.

    Every batch size runs the same `chunks` clips, or with `each_batch_once` one call of `batch` clips (two
    for batch 1): the GPU run, where 64 chunks at batch 1 would cost minutes. Outputs are compared with batch
    1's on the clips both ran."""
    import torch

    from headrouter import PruneOptions

    cuda = lalm.device.type == "cuda"
    clock = _Clock(cuda)
    rows = []
    for s in seconds:
        audios = _clips(s, chunks)
        prompts = [lalm.asr_prompt] * chunks
        for method, retain in (("vanilla", 1.0), ("headrouter", 0.4)):
            opts = PruneOptions(method=method, retain=retain)
            reference = None
            for b in batches:
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                outs, largest_kv = [], 0
                n = max(b, 2) if each_batch_once else chunks
                start = clock.now()
                for i in range(0, n, b):
                    part = lalm.generate(
                        audios[i : i + b], prompts[i : i + b], opts, new_tokens, min_new_tokens=new_tokens
                    )
                    largest_kv = max(largest_kv, sum(o.kv_bytes_kept for o in part))
                    outs += part
                spent = clock.now() - start
                prefill, decode = sum(o.prefill_s for o in outs), sum(o.decode_s for o in outs)
                decode_spent = (
                    spent * decode / (prefill + decode)
                )  # the wall split applied to the clock's total
                tokens = [o.token_ids for o in outs]
                reference = reference or tokens
                common = min(len(tokens), len(reference))
                rows.append(
                    {
                        "chunk_s": s,
                        "method": method,
                        "retain": retain,
                        "batch": b,
                        "chunks": n,
                        "seconds": spent,
                        "chunks_per_s": n / spent,
                        "audio_s_per_s": n * s / spent,
                        "decode_tokens_per_s": sum(len(t) - 1 for t in tokens) / decode_spent,
                        "kv_bytes_largest_call": largest_kv,
                        "peak_bytes": torch.cuda.max_memory_allocated() if cuda else None,
                        "same_as_batch_1": tokens[:common] == reference[:common],
                    }
                )
                log.info("batch: %gs %s b=%d %.1f s", s, method, b, spent)
    return rows


def pipeline_rows(folder: Path, model: str, files: int, seconds: float, batch: int, new_tokens: int) -> dict:
    """run_job over `files` full-window chunks: serial engine (batch 1) vs `batch`; audio seconds per second."""
    import ray

    from bench.pipeline import make_audio
    from headrouter.options import PruneOptions
    from pipeline import RunOptions, read_results, run_job

    archive = folder / f"archive-{files}x{int(seconds)}s"
    archive.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        make_audio(archive / f"talk{i:02d}.flac", seconds)
    out, texts = {}, {}
    try:
        for name, size in (("serial", 1), ("batched", batch)):
            dest = folder / f"out-{name}"
            opts = RunOptions(
                input=str(archive), output=str(dest), model=model, prune=PruneOptions(retain=0.4),
                workers=(1, 1), batch_size=size, max_new_tokens=new_tokens, progress_s=60.0,
            )  # fmt: skip
            start = time.perf_counter()
            summary = run_job(opts)
            wall = time.perf_counter() - start
            chunks = read_results(str(dest)).chunks
            texts[name] = sorted((r["id"], r["chunk_index"], r["text"]) for r in chunks.to_pylist())
            out[name] = {"batch_size": size, "wall_s": wall, "audio_s": summary.audio_s,
                         "files_ok": summary.files_ok, "audio_s_per_s": summary.audio_s / wall}  # fmt: skip
    finally:
        ray.shutdown()
    out["speedup"] = out["batched"]["audio_s_per_s"] / out["serial"]["audio_s_per_s"]
    out["same_outputs"] = texts["serial"] == texts["batched"]
    out["model"] = model
    return out


def budget_rows(chunk_s: float = 300.0, new_tokens: int = 64, vanilla_chunks: int = 16) -> list[dict]:
    """Chunks one budget holds (sized for `vanilla_chunks` unpruned chunks) at retain 1.0 and 0.4."""
    from headrouter.routing import keep_count
    from workers.batching import plan_batches

    audio = int(chunk_s * 25)
    text = 40
    rows = []
    for name, layers in (("scaled 12-layer", 12), ("Qwen2.5-Omni-3B (36 layers)", 36)):

        def cost(kept: int, layers=layers) -> float:  # LALM.kv_tokens of one chunk at M = 2: slots / L
            return (2 * (audio + text + new_tokens) + (layers - 2) * (kept + new_tokens)) / layers

        full = cost(audio + text)
        pruned = cost(keep_count(audio, 0.4) + text)
        budget = vanilla_chunks * full
        fit = [len(plan_batches([c] * 256, 256, budget)[0]) for c in (full, pruned)]
        rows.append({"model": name, "budget": budget, "vanilla": fit[0], "headrouter_0.4": fit[1],
                     "ratio": fit[1] / fit[0]})  # fmt: skip
    return rows


def tiny_synth_row(new_tokens: int = 32) -> dict:
    """tiny-synth, HeadRouter 0.4: one generate over 8 clips of mixed lengths vs 8 one-clip calls."""
    from headrouter import PruneOptions, load_lalm

    lalm = load_lalm("tiny-synth")
    lengths = [0.5, 1.2, 2.0, 3.3, 4.1, 5.0, 7.5, 9.8]
    audios = [_clips(s, i + 1)[-1] for i, s in enumerate(lengths)]
    prompts = ["transcribe the digits", "what is the sound ?"] * 4
    opts = PruneOptions(method="headrouter", retain=0.4)
    clock = _Clock(False)
    lalm.generate(audios[:1], prompts[:1], opts, 2)  # warm-up
    start = clock.now()
    one = [
        lalm.generate([a], [p], opts, new_tokens, min_new_tokens=new_tokens)[0]
        for a, p in zip(audios, prompts)
    ]
    serial = clock.now() - start
    start = clock.now()
    batched = lalm.generate(audios, prompts, opts, new_tokens, min_new_tokens=new_tokens)
    together = clock.now() - start
    same = [o.token_ids for o in one] == [o.token_ids for o in batched]
    return {"clips": len(audios), "serial_s": serial, "batched_s": together, "ratio": serial / together,
            "same_outputs": same}  # fmt: skip


def run_batch(run) -> None:
    """The `batch` subcommand's runner (bench.suite.SUBCOMMANDS)."""
    import torch

    from bench.pipeline import save_bench_model
    from headrouter import load_lalm

    quick = run.results.get("quick")
    with tempfile.TemporaryDirectory(prefix="hr-bench-batch-") as tmp:
        folder = Path(tmp)
        if run.full_size:
            model = None  # the engine part runs the full 3B shape from bench.prefill below
        elif quick:
            model = "tiny-random"
        else:
            model = str(save_bench_model(folder / "bench-12l", run.plan.hidden, 12))
        if run.full_size:
            lalm = run.bench().lalm
            seconds, batches, chunks, new = [300.0], [1, 8, 32, 64], 64, 256
        else:
            lalm = load_lalm(model)
            seconds, batches, chunks, new = (
                ([5.0, 20.0], [1, 4], 4, 8) if quick else ([60.0, 300.0], [1, 4, 8, 16], 16, 64)
            )
        res = {
            "model": run.plan.pipeline_model if not quick else "tiny-random",
            "threads": torch.get_num_threads(),
        }
        res["engine"] = engine_rows(lalm, seconds, batches, chunks, new, each_batch_once=run.full_size)
        if not run.full_size:
            files, file_s, size = (2, 20.0, 2) if quick else (12, 300.0, 8)
            res["pipeline"] = pipeline_rows(folder, model, files, file_s, size, 16 if quick else 64)
        res["budget"] = budget_rows()
        res["tiny_synth"] = tiny_synth_row(8 if quick else 32)
    run.results["batch"] = res


def _ratio(rows: list[dict], s: float, method: str, b: int, key: str) -> float | None:
    pick = {r["batch"]: r[key] for r in rows if r["chunk_s"] == s and r["method"] == method}
    return pick[b] / pick[1] if b in pick and 1 in pick else None


def batch_targets(res: dict) -> list[dict]:
    """The batching targets of the throughput issue, measured or not."""
    b = res.get("batch")
    if not b:
        return []
    out = []
    eng = b["engine"]
    short = min(r["chunk_s"] for r in eng)
    for size, need in ((8, 3.0), (16, 4.0)):
        got = _ratio(eng, short, "vanilla", size, "decode_tokens_per_s")
        label = f"decode tokens/s at batch {size} >= {need:g}x batch 1 ({short:g}-s chunks, vanilla)"
        out.append({"target": label, "measured": "-" if got is None else f"{got:.2f}x",
                    "met": None if got is None else got >= need, "note": ""})  # fmt: skip
    if "pipeline" in b:
        p = b["pipeline"]
        out.append({"target": "jobs.run batched >= 2x audio-s/s of the serial engine, same outputs",
                    "measured": f"{p['speedup']:.2f}x, same outputs: {p['same_outputs']}",
                    "met": p["speedup"] >= 2 and p["same_outputs"],
                    "note": f"{p['serial']['audio_s'] / 3600:.2f} h of audio"})  # fmt: skip
    for r in b["budget"]:
        out.append({"target": f"same --max-batch-tokens: HeadRouter 0.4 fits >= 2x the chunks ({r['model']})",
                    "measured": f"{r['headrouter_0.4']} vs {r['vanilla']} ({r['ratio']:.2f}x)",
                    "met": r["ratio"] >= 2, "note": "KV tokens averaged over layers, M = 2"})  # fmt: skip
    t = b["tiny_synth"]
    out.append({"target": "tiny-synth: one call over 8 mixed clips >= 3x less CPU than 8 calls, same outputs",
                "measured": f"{t['ratio']:.2f}x, same outputs: {t['same_outputs']}",
                "met": t["ratio"] >= 3 and t["same_outputs"], "note": ""})  # fmt: skip
    return out


def render_batch(res: dict) -> str:
    b = res.get("batch")
    if not b:
        return ""
    parts = [f"\n## Batched generation\n\nModel: {b['model']}, {b['threads']} torch thread(s). Every sample decodes "
             "the same number of tokens. 'same' compares each batch's tokens with batch 1's.\n\n"]  # fmt: skip
    parts.append(
        "| chunk s | method | batch | chunks/s | audio s/s | decode tok/s | vs batch 1 | KV of the largest call MiB "
        "| peak MiB | same |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )
    for r in b["engine"]:
        ratio = _ratio(b["engine"], r["chunk_s"], r["method"], r["batch"], "decode_tokens_per_s")
        parts.append(
            f"| {r['chunk_s']:g} | {r['method']} {r['retain']:g} | {r['batch']} | {r['chunks_per_s']:.3f} | "
            f"{r['audio_s_per_s']:.1f} | {r['decode_tokens_per_s']:.1f} | {ratio:.2f}x | "
            f"{r['kv_bytes_largest_call'] / 2**20:.1f} | "
            f"{'-' if r['peak_bytes'] is None else format(r['peak_bytes'] / 2**20, '.0f')} | {r['same_as_batch_1']} |\n"
        )
    if "pipeline" in b:
        p = b["pipeline"]
        parts.append(
            "\n| jobs.run | batch size | wall s | audio s | audio s per s |\n|---|---|---|---|---|\n"
        )
        for name in ("serial", "batched"):
            q = p[name]
            parts.append(
                f"| {name} | {q['batch_size']} | {q['wall_s']:.1f} | {q['audio_s']:.0f} | {q['audio_s_per_s']:.2f} |\n"
            )
        parts.append(f"\nBatched / serial: {p['speedup']:.2f}x; same outputs: {p['same_outputs']}.\n")
    parts.append(
        "\n| budget (KV tokens) | model | vanilla chunks | HeadRouter 0.4 chunks | ratio |\n|---|---|---|---|---|\n"
    )
    for r in b["budget"]:
        parts.append(
            f"| {r['budget']:,.0f} | {r['model']} | {r['vanilla']} | {r['headrouter_0.4']} | {r['ratio']:.2f}x |\n"
        )
    t = b["tiny_synth"]
    parts.append(f"\ntiny-synth, 8 mixed clips: 8 calls {t['serial_s']:.2f} s vs one call {t['batched_s']:.2f} s "
                 f"({t['ratio']:.2f}x), same outputs: {t['same_outputs']}.\n")  # fmt: skip
    return "".join(parts)
