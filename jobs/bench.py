"""Performance benchmark: `python -m jobs.bench [prefill|routing|memory|pipeline|all] [--quick] [--full-size] --out DIR`.

prefill  every method at retain 0.7/0.4/0.1 on 1500 and 7500 audio tokens (1 and 5 minutes), interleaved rounds,
         medians; measured speed-up over vanilla next to the FLOP bound (jobs.bench_flops) and their ratio.
routing  the same timing for vanilla and HeadRouter only: time inside the pruning hook at layer M (probe + routing
         + selection + slicing) as a share of the vanilla prefill (prefill reports it for every method too).
memory   KV-cache bytes and the prefill's peak memory per method and retain (CPU: peak RSS in a fresh process
         per configuration; GPU: peak allocated).
pipeline Ray Data end to end vs the model alone on the same chunks (1 and 2 actors), decode + chunk + features
         real-time factor per core, decode-and-chunk peak memory for 5-, 30- and 120-minute inputs.
Writes DIR/bench.json and DIR/bench.md. No timing is asserted anywhere; targets are reported, met or missed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from jobs.bench_flops import (
    AUDIO_ENCODER_OMNI,
    OMNI_3B_TEXT,
    audio_encoder_flops,
    prefill_flops,
    probe_flops,
    speedup_bound,
)

log = logging.getLogger("jobs")

METHODS = ("random", "frame", "fastv", "dart", "headrouter")
RETAINS = (0.7, 0.4, 0.1)
TOKENS_PER_S = 25  # Qwen2.5-Omni: 40 ms per audio token


@dataclass(frozen=True)
class Plan:
    """What one invocation measures (presets below; flags override)."""

    hidden: int = 256
    # 24 of the 3B's 36 layers: a single-threaded 36-layer prefill of 7500 tokens costs ~30 CPU-seconds here,
    # and 2 rounds of 16 configurations at 36 layers do not fit the 15-minute budget on shared cores
    # (`--layers 36` runs the real depth when the machine is quiet; the FLOP bound follows the depth used)
    layers: int = 24
    threads: int | None = 1  # CPU runs: one thread, timed by process CPU time (None: torch's default)
    lengths: tuple[int, ...] = (1500, 7500)
    rounds: tuple[int, ...] = (3, 2)  # per length; 7500 tokens cost ~25 s per vanilla prefill here
    memory_length: int = 7500
    # (method, retain) pairs measured after vanilla; FastV and HeadRouter are the comparison
    memory_configs: tuple[tuple[str, float], ...] = (
        ("fastv", 0.4),
        ("headrouter", 0.4),
        ("fastv", 0.1),
        ("headrouter", 0.1),
        ("dart", 0.4),
    )
    engine_lm_head: bool = False  # also measure vanilla and headrouter 0.4 with lm_head on every position
    pipeline_files: int = 6
    pipeline_file_s: float = 120.0
    pipeline_model: str = "bench-12l"  # the scaled 3B-shaped thinker at 12 layers, saved as a folder
    pipeline_actors: tuple[int, ...] = (1, 2)
    pipeline_marginal: bool = True  # also run 2N files to split fixed from marginal cost
    rtf_file_s: float = 300.0
    memory_minutes: tuple[float, ...] = (5, 30, 120)


FULL = Plan()
QUICK = Plan(
    hidden=64,
    layers=6,
    lengths=(100, 300),
    rounds=(2, 2),
    memory_length=300,
    memory_configs=(("headrouter", 0.4),),
    pipeline_files=2,
    pipeline_file_s=5.0,
    pipeline_actors=(1,),
    pipeline_marginal=False,
    pipeline_model="tiny-random",
    rtf_file_s=20.0,
    memory_minutes=(0.25, 1),
)
GPU = replace(
    FULL,
    layers=36,
    threads=None,
    rounds=(10, 10),
    memory_configs=tuple((m, r) for m in METHODS for r in RETAINS),
    engine_lm_head=True,
)


# ---- prefill timing --------------------------------------------------------------------------------------
def time_prefill(bench, lengths, rounds, configs) -> dict:
    """Interleaved rounds over `configs` [(method, retain)] (vanilla first in the list) per length."""
    out = {}
    warm = max(16, min(lengths) // 8)
    log.info("prefill warm-up: every configuration once on %d audio tokens", warm)
    for cfg in configs:  # first calls pay one-time costs (kernel selection, lazy imports): keep them out
        bench.prefill(warm, *cfg)
    for n, r_count in zip(lengths, rounds):
        log.info("prefill %d audio tokens: warm-up, then %d rounds of %d configs", n, r_count, len(configs))
        bench.prefill(n, "vanilla", 1.0)
        samples: dict[tuple, list[dict]] = {c: [] for c in configs}
        for r in range(r_count):
            # forward, then backward: a slow drift of the machine's load hits every configuration alike
            for cfg in configs if r % 2 == 0 else configs[::-1]:
                samples[cfg].append(dict(bench.prefill(n, *cfg), loadavg=os.getloadavg()[0]))
            log.info("  round %d/%d done (load average %.1f)", r + 1, r_count, os.getloadavg()[0])
        out[n] = samples
    return out


def prefill_rows(shape, timings: dict, basis: str = "wall") -> list[dict]:
    """Rows per (length, method, retain). basis "cpu": speed-ups from process CPU time (single-threaded runs
    on shared cores: immune to other processes), "wall": from wall-clock time (GPU, or several threads)."""
    suffix = "_cpu_s" if basis == "cpu" else "_s"
    total = "cpu_s" if basis == "cpu" else "seconds"
    rows = []
    for n, samples in timings.items():
        vanilla = samples[("vanilla", 1.0)]
        van = statistics.median(s[total] for s in vanilla)
        for (method, retain), runs in samples.items():
            first = runs[0]

            def paired(key, runs=runs, vanilla=vanilla):  # median of vanilla / method, same round
                return statistics.median(v[key] / s[key] for v, s in zip(vanilla, runs))

            bound = speedup_bound(shape.text, first["seq_len"], first["kept_len"], shape.layer)
            speedup = paired(total)
            prune = statistics.median(s["prune" + suffix] for s in runs)
            fl_van = prefill_flops(shape.text, first["seq_len"], None, shape.layer)
            fl = prefill_flops(shape.text, first["seq_len"], first["kept_len"], shape.layer)
            late = None
            if first.get("late" + suffix) is not None:
                # do the layers >= M alone speed up as their FLOPs say?
                late = paired("late" + suffix) / (fl_van["late"] / fl["late"])
            rows.append(
                {
                    "audio_tokens": n,
                    "method": method,
                    "retain": retain,
                    "seq_len": first["seq_len"],
                    "kept_len": first["kept_len"],
                    "kept_audio": first["kept_audio"],
                    "basis": basis,
                    "median_s": statistics.median(s[total] for s in runs),
                    "median_wall_s": statistics.median(s["seconds"] for s in runs),
                    "median_cpu_s": statistics.median(s["cpu_s"] for s in runs),
                    "all_wall_s": [s["seconds"] for s in runs],
                    "all_cpu_s": [s["cpu_s"] for s in runs],
                    "loadavg": [s["loadavg"] for s in runs],
                    "speedup": speedup,
                    "speedup_wall": paired("seconds"),
                    "speedup_cpu_time": paired("cpu_s"),
                    "flop_bound": bound,
                    "efficiency": speedup / bound,
                    "efficiency_wall": paired("seconds") / bound,
                    "prune_hook_s": prune,
                    "early_s": _median_or_none(runs, "early" + suffix),
                    "late_s": _median_or_none(runs, "late" + suffix),
                    "late_layers_efficiency": late,
                    "prune_share_of_vanilla": prune / van,
                    "kv_bytes_full": first["kv_bytes_full"],
                    "kv_bytes_kept": first["kv_bytes_kept"],
                }
            )
    return rows


def _median_or_none(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def full_size_bounds(lengths=(1500, 7500), retains=RETAINS, layer: int = 2) -> list[dict]:
    """Analytical bounds for the real Qwen2.5-Omni-3B (LLM only, and with the audio encoder counted)."""
    from jobs.bench_prefill import PROMPT

    rows = []
    text_tokens = len(PROMPT.split()) + 8  # roughly the template's tokens around the audio
    for n in lengths:
        seq = n + text_tokens
        enc = audio_encoder_flops(AUDIO_ENCODER_OMNI, n / TOKENS_PER_S)
        llm = prefill_flops(OMNI_3B_TEXT, seq, None, layer)["total"]
        for r in retains:
            kept = seq - n + int(n * r + 1e-9)
            rows.append(
                {
                    "audio_tokens": n,
                    "retain": r,
                    "llm_tflop_vanilla": llm / 1e12,
                    "encoder_tflop": enc / 1e12,
                    "encoder_share_of_vanilla": enc / (enc + llm),
                    "llm_bound": speedup_bound(OMNI_3B_TEXT, seq, kept, layer),
                    "end_to_end_bound": speedup_bound(OMNI_3B_TEXT, seq, kept, layer, encoder_flops=enc),
                    # HeadRouter's probe: k_proj over every audio token, q_proj over the query text, scores
                    "probe_share": probe_flops(OMNI_3B_TEXT, n, text_tokens) / llm,
                    # what the engine's prefill adds today: lm_head over every kept position, and its logits
                    "engine_lm_head_share": 2 * OMNI_3B_TEXT.hidden * OMNI_3B_TEXT.vocab * (kept - 1) / llm,
                    "engine_logits_gib_bf16": kept * OMNI_3B_TEXT.vocab * 2 / 2**30,
                }
            )
    return rows


# ---- memory ---------------------------------------------------------------------------------------------
def memory_rows(shape, plan: Plan, bench=None) -> list[dict]:
    """Peak memory per configuration; fresh process per config on CPU, `bench`'s process on GPU."""
    from jobs.bench_prefill import measure_peak_cuda, peak_memory_child

    configs = [("vanilla", 1.0, True)] + [(m, r, True) for m, r in plan.memory_configs]
    if plan.engine_lm_head:
        configs += [("vanilla", 1.0, False), ("headrouter", 0.4, False)]
    rows = []
    for method, retain, last_only in configs:
        log.info("memory: %s retain %.1f on %d tokens", method, retain, plan.memory_length)
        if shape.device.startswith("cuda"):
            bench.set_last_position_only(last_only)
            r = measure_peak_cuda(bench, plan.memory_length, method, retain)
            bench.set_last_position_only(True)
        else:
            r = peak_memory_child(shape, plan.memory_length, method, retain, last_only)
        lm_head = "last position" if last_only else "every position (engine today)"
        rows.append(dict(r, method=method, retain=retain, audio_tokens=plan.memory_length, lm_head=lm_head))
    # What the paper's FastV baseline would hold on top: one layer's eager attention weights [H, T, T].
    n = plan.memory_length
    t = rows[0].get("seq_len", n)
    itemsize = 2 if shape.dtype in ("bfloat16", "float16") else 4
    for row in rows:
        row["eager_attention_weights_bytes"] = shape.text.heads * t * t * itemsize
    return rows


# ---- machine and run facts -------------------------------------------------------------------------------
def machine() -> dict:
    import torch

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "loadavg_start": os.getloadavg(),
    }
    import transformers

    info["transformers"] = transformers.__version__
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


# ---- entry point ------------------------------------------------------------------------------------------
def run(what: str, quick: bool, full_size: bool, out: Path, overrides: dict) -> dict:
    """Run the selected benchmarks; writes out/bench.json and out/bench.md; returns the results."""
    from jobs.bench_prefill import BenchModel, full_3b_shape, scaled_3b_shape
    from jobs.bench_report import render_markdown, targets

    plan = QUICK if quick else (GPU if full_size else FULL)
    plan = replace(plan, **{k: v for k, v in overrides.items() if v is not None})
    if len(plan.rounds) != len(plan.lengths):
        plan = replace(plan, rounds=(plan.rounds[-1],) * len(plan.lengths))
    if plan.threads and not full_size:
        import torch

        torch.set_num_threads(plan.threads)
        os.environ["OMP_NUM_THREADS"] = str(plan.threads)  # the memory children inherit it
    if full_size:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--full-size needs a CUDA GPU (the full 3B shape does not fit this CPU budget)")
        shape = full_3b_shape()
    else:
        shape = scaled_3b_shape(plan.hidden, plan.layers)
    started = time.time()
    results: dict = {
        "command": "python -m jobs.bench " + " ".join(sys.argv[1:]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
        "machine": machine(),
        "plan": asdict(plan),
        "quick": quick,
        "full_size": full_size,
    }
    bench = None
    if what in ("prefill", "routing", "all") or (what == "memory" and full_size):
        bench = BenchModel(shape)
        results["shape"] = dict(
            asdict(bench.shape), params=sum(p.numel() for p in bench.lalm.model.parameters())
        )
        shape = bench.shape
    if what in ("prefill", "routing", "all"):
        methods = METHODS if what != "routing" else ("headrouter",)
        configs = [("vanilla", 1.0)] + [(m, r) for m in methods for r in RETAINS]
        timings = time_prefill(bench, plan.lengths, plan.rounds, configs)
        import torch

        basis = "cpu" if shape.device == "cpu" and torch.get_num_threads() == 1 else "wall"
        results["prefill"] = prefill_rows(shape, timings, basis)
        results["full_size_bounds"] = full_size_bounds()
    if what in ("memory", "all"):
        results["memory"] = memory_rows(shape, plan, bench)
    if what in ("pipeline", "all") and not full_size:
        from jobs.bench_pipeline import decode_memory, pipeline_throughput, stage_rtf

        with tempfile.TemporaryDirectory(prefix="hr-bench-audio-") as tmp:
            folder = Path(tmp)
            log.info("pipeline: decode + chunk + features real-time factor")
            results["stage_rtf"] = stage_rtf(folder, plan.rtf_file_s)
            log.info("pipeline: decode-and-chunk peak memory for %s minutes", plan.memory_minutes)
            results["decode_memory"] = decode_memory(folder, plan.memory_minutes)
            log.info("pipeline: Ray Data vs the model alone, %s actors", plan.pipeline_actors)
            model = plan.pipeline_model
            if model.startswith("bench-"):
                from jobs.bench_pipeline import save_bench_model

                layers = int(model.split("-")[1].rstrip("l"))
                model = str(save_bench_model(folder / model, plan.hidden, layers))
            results["pipeline"] = pipeline_throughput(
                folder,
                plan.pipeline_files,
                plan.pipeline_file_s,
                actors=plan.pipeline_actors,
                marginal=plan.pipeline_marginal,
                model=model,
            )
            results["pipeline"]["model"] = plan.pipeline_model
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["duration_s"] = time.time() - started
    results["targets"] = targets(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "bench.md").write_text(render_markdown(results))
    log.info("wrote %s and %s in %.0f s", out / "bench.json", out / "bench.md", results["duration_s"])
    return results


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.bench", description=__doc__.split("\n")[0])
    p.add_argument(
        "what", nargs="?", default="all", choices=("prefill", "routing", "memory", "pipeline", "all")
    )
    p.add_argument("--quick", action="store_true", help="tiny shapes and inputs (the smoke test; seconds)")
    p.add_argument("--full-size", action="store_true", help="the real 3B text shape in bfloat16 on CUDA")
    p.add_argument("--out", type=Path, default=Path("out/bench"), help="folder for bench.json and bench.md")
    p.add_argument("--hidden", type=int, help="width of the scaled model (default 256; heads stay 16)")
    p.add_argument("--layers", type=int, help="decoder layers (default 36, the 3B's)")
    p.add_argument("--lengths", type=_ints, help="audio token counts, e.g. 1500,7500")
    p.add_argument("--rounds", type=_ints, help="timed rounds per length, e.g. 5,3")
    p.add_argument(
        "--threads", type=int, help="torch threads for the prefill and memory runs (default 1 on CPU)"
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    overrides = {
        "threads": args.threads,
        "hidden": args.hidden,
        "layers": args.layers,
        "lengths": args.lengths,
        "rounds": args.rounds,
    }
    results = run(args.what, args.quick, args.full_size, args.out, overrides)
    print((args.out / "bench.md").read_text())
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
