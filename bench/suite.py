"""The benchmark suite behind `python -m jobs.bench`: plans (presets), one runner per subcommand, the run.

A runner takes the `Run` (plan, shape, results so far) and adds its section to `run.results`; `SUBCOMMANDS`
maps each subcommand to its runners, in order. Writes DIR/bench.json and DIR/bench.md. No timing is asserted
anywhere; targets are reported, met or missed.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from bench.batch import run_batch
from bench.continuous import run_continuous
from bench.flops import (
    AUDIO_ENCODER_OMNI,
    OMNI_3B_TEXT,
    audio_encoder_flops,
    prefill_flops,
    probe_flops,
    speedup_bound,
)
from bench.loop import run_loop

log = logging.getLogger("bench")

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
    # (method, retain) pairs measured after vanilla; FastV vs HeadRouter is the main comparison
    memory_configs: tuple[tuple[str, float], ...] = (
        ("fastv", 0.4),
        ("headrouter", 0.4),
        ("fastv", 0.1),
        ("headrouter", 0.1),
        ("dart", 0.4),
    )
    # also measure vanilla and headrouter 0.4 with lm_head on every position (a stock prefill; the engine keeps the
    # last position only, so these rows show what that saves)
    engine_lm_head: bool = False
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
    from bench.prefill import PROMPT

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
                    # what a stock prefill adds and the engine avoids by keeping the last position only:
                    # lm_head over every kept position, and its logits
                    "engine_lm_head_share": 2 * OMNI_3B_TEXT.hidden * OMNI_3B_TEXT.vocab * (kept - 1) / llm,
                    "engine_logits_gib_bf16": kept * OMNI_3B_TEXT.vocab * 2 / 2**30,
                }
            )
    return rows


# ---- memory ---------------------------------------------------------------------------------------------
def memory_rows(shape, plan: Plan, bench=None) -> list[dict]:
    """Peak memory per configuration; fresh process per config on CPU, `bench`'s process on GPU."""
    from bench.prefill import measure_peak_cuda, peak_memory_child

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
        lm_head = "last position" if last_only else "every position (stock prefill)"
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


# ---- subcommands -----------------------------------------------------------------------------------------
@dataclass
class Run:
    """One invocation: its plan, the model shape, and the results the runners fill in."""

    plan: Plan
    shape: object  # bench.prefill.BenchShape
    full_size: bool
    results: dict = field(default_factory=dict)
    model: object = None  # the BenchModel, built by the first runner that needs it

    def bench(self):
        """The BenchModel for `shape`, built on first use (its resolved shape replaces the planned one)."""
        if self.model is None:
            from bench.prefill import BenchModel

            self.model = BenchModel(self.shape)
            params = sum(p.numel() for p in self.model.lalm.model.parameters())
            self.results["shape"] = dict(asdict(self.model.shape), params=params)
            self.shape = self.model.shape
        return self.model


def run_prefill(run: Run, methods: tuple[str, ...] = METHODS) -> None:
    """Prefill time per method and retain, FLOP bounds for the scaled and the real 3B shape."""
    import torch

    bench = run.bench()
    configs = [("vanilla", 1.0)] + [(m, r) for m in methods for r in RETAINS]
    timings = time_prefill(bench, run.plan.lengths, run.plan.rounds, configs)
    basis = "cpu" if run.shape.device == "cpu" and torch.get_num_threads() == 1 else "wall"
    run.results["prefill"] = prefill_rows(run.shape, timings, basis)
    run.results["full_size_bounds"] = full_size_bounds()


def run_routing(run: Run) -> None:
    """The prefill timing for vanilla and HeadRouter only (the routing hook's share of the prefill)."""
    run_prefill(run, ("headrouter",))


def run_memory(run: Run) -> None:
    """KV-cache bytes and peak memory per method and retain."""
    bench = run.bench() if run.full_size else run.model
    run.results["memory"] = memory_rows(run.shape, run.plan, bench)


def run_pipeline(run: Run) -> None:
    """Ray Data end to end vs the model alone, stage real-time factors, decode memory (CPU runs only)."""
    if run.full_size:
        return
    from bench.pipeline import decode_memory, pipeline_throughput, save_bench_model, stage_rtf

    plan = run.plan
    with tempfile.TemporaryDirectory(prefix="hr-bench-audio-") as tmp:
        folder = Path(tmp)
        log.info("pipeline: decode + chunk + features real-time factor")
        run.results["stage_rtf"] = stage_rtf(folder, plan.rtf_file_s)
        log.info("pipeline: decode-and-chunk peak memory for %s minutes", plan.memory_minutes)
        run.results["decode_memory"] = decode_memory(folder, plan.memory_minutes)
        log.info("pipeline: Ray Data vs the model alone, %s actors", plan.pipeline_actors)
        model = plan.pipeline_model
        if model.startswith("bench-"):
            layers = int(model.split("-")[1].rstrip("l"))
            model = str(save_bench_model(folder / model, plan.hidden, layers))
        run.results["pipeline"] = pipeline_throughput(
            folder,
            plan.pipeline_files,
            plan.pipeline_file_s,
            actors=plan.pipeline_actors,
            marginal=plan.pipeline_marginal,
            model=model,
        )
        run.results["pipeline"]["model"] = plan.pipeline_model


def run_gating(run: Run) -> None:
    """Window gating: prefill with the audio encoder on chunks with 0/30/60% empty windows, gated vs not."""
    from bench.gating import run_gating as gating

    gating(run)


# subcommand -> runners, in order
SUBCOMMANDS: dict[str, tuple[Callable[[Run], None], ...]] = {
    "gating": (run_gating,),
    "prefill": (run_prefill,),
    "routing": (run_routing,),
    "memory": (run_memory,),
    "pipeline": (run_pipeline,),
    "batch": (run_batch,),
    "loop": (run_loop,),
    "continuous": (run_continuous,),
    "all": (run_prefill, run_memory, run_pipeline, run_batch, run_loop),
}


def run(what: str, quick: bool, full_size: bool, out: Path, overrides: dict, command: str = "") -> dict:
    """Run subcommand `what` (a key of SUBCOMMANDS); writes out/bench.json and out/bench.md; returns the results."""
    from bench.prefill import full_3b_shape, scaled_3b_shape
    from bench.report import render_markdown, targets

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
            raise ValueError("--full-size needs a CUDA GPU (the full 3B shape does not fit this CPU budget)")
        shape = full_3b_shape()
    else:
        shape = scaled_3b_shape(plan.hidden, plan.layers)
    started = time.time()
    results: dict = {
        "command": command,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
        "machine": machine(),
        "plan": asdict(plan),
        "quick": quick,
        "full_size": full_size,
    }
    state = Run(plan, shape, full_size, results)
    for runner in SUBCOMMANDS[what]:
        runner(state)
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["duration_s"] = time.time() - started
    results["targets"] = targets(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "bench.md").write_text(render_markdown(results))
    log.info("wrote %s and %s in %.0f s", out / "bench.json", out / "bench.md", results["duration_s"])
    return results
