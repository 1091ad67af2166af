"""Cost per audio-hour on a GPU: a roofline model of batched transcription with and without pruning.

For a batch of B chunks of S seconds, each emitting D = ceil(tokens_per_audio_s * S) tokens (at most max_new):
- prefill (per chunk, compute-bound): audio encoder FLOPs + LLM prefill FLOPs (layers < M at the full length,
  layers >= M at the kept length), at `prefill_mfu` of the GPU's bf16 peak;
- decode (per step, bandwidth-bound): the text weights once + the KV cache of every sequence in the batch
  (its mean size over the D steps), at `decode_efficiency` of the memory bandwidth; the step is never faster
  than its matmul FLOPs (2 * params * B) allow;
- the batch is capped by memory: weights + B * (KV at the last step) <= `memory_fraction` of the GPU.
audio-hours per GPU-hour = B * S / (B * prefill + D * step).

The efficiencies (`Efficiency`: prefill MFU of the audio encoder and of the LLM, decode bandwidth efficiency by
batch, unpruned and pruned) come from the newest committed GPU results (`bench.gpu_results`, derived against that
GPU's datasheet roofline in GPUS) and are applied to the chosen GPU's datasheet; without committed results they
are assumed (50% of peak, 70% of bandwidth). Every report says which, and from which GPU and date.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from bench.flops import (
    AUDIO_ENCODER_OMNI,
    OMNI_3B_TEXT,
    OMNI_7B_TEXT,
    EncoderShape,
    TextShape,
    audio_encoder_flops,
    prefill_flops,
)

__all__ = [
    "ASSUMED",
    "GPUS",
    "SHAPES",
    "GPU",
    "Efficiency",
    "LALMShape",
    "efficiency",
    "format_dry_run",
    "throughput",
]


@dataclass(frozen=True)
class GPU:
    """Datasheet figures: memory (bytes), memory bandwidth (bytes/s), dense bf16 tensor FLOP/s."""

    name: str
    memory: float
    bandwidth: float
    bf16_flops: float


GPUS = {
    "h100": GPU("H100 SXM 80 GB", 80e9, 3.35e12, 989e12),
    "h200": GPU("H200 141 GB", 141e9, 4.8e12, 989e12),
    "a100": GPU("A100 SXM 80 GB", 80e9, 2.039e12, 312e12),
    "l40s": GPU("L40S 48 GB", 48e9, 0.864e12, 362e12),
    "l4": GPU("L4 24 GB", 24e9, 0.3e12, 121e12),
}


@dataclass(frozen=True)
class LALMShape:
    name: str
    text: TextShape
    encoder: EncoderShape


SHAPES = {
    "qwen2.5-omni-3b": LALMShape("Qwen2.5-Omni-3B", OMNI_3B_TEXT, AUDIO_ENCODER_OMNI),
    "qwen2.5-omni-7b": LALMShape(
        "Qwen2.5-Omni-7B",
        OMNI_7B_TEXT,
        EncoderShape(d_model=1280, layers=32, ffn=5120, output_dim=3584),
    ),
}

BF16 = 2  # bytes per parameter and per cached value
PROMPT_TOKENS = 40  # chat template + instruction around the audio span


def text_params(s: TextShape) -> int:
    """Decoder parameters read by one decode step: layers + lm_head (the embedding lookup reads one row; tied or
    not, the lm_head matrix is read once per step)."""
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    per_layer = s.hidden * q + 2 * s.hidden * kv + q * s.hidden + 3 * s.hidden * s.intermediate
    return s.layers * per_layer + s.hidden * s.vocab


def kv_bytes_per_token(s: TextShape) -> int:
    """Keys + values of one token in one layer, bf16."""
    return 2 * s.kv_heads * s.head_dim * BF16


@dataclass(frozen=True)
class Efficiency:
    """Fractions of a GPU's datasheet roofline the engine reaches: prefill FLOP/s of the audio encoder and of the
    LLM, decode bytes/s by batch ((batch, efficiency) ascending; `decode_pruned` for retain < 1). `source` says
    where they come from; `measured` is False for the assumed defaults."""

    encoder_mfu: float
    llm_mfu: float
    decode: tuple[tuple[int, float], ...]
    decode_pruned: tuple[tuple[int, float], ...]
    measured: bool
    source: str

    def decode_at(self, batch: int, pruned: bool) -> float:
        """Bandwidth efficiency at `batch`: linear in log(batch) between measured batches, flat outside them."""
        points = self.decode_pruned if pruned and self.decode_pruned else self.decode
        if batch <= points[0][0]:
            return points[0][1]
        for (b0, e0), (b1, e1) in zip(points, points[1:]):
            if batch <= b1:
                t = (math.log(batch) - math.log(b0)) / (math.log(b1) - math.log(b0))
                return e0 + t * (e1 - e0)
        return points[-1][1]

    def describe(self) -> str:
        """One line: where the efficiencies come from and what they are."""
        dec = [e for _, e in self.decode + self.decode_pruned]
        span = f"{min(dec):.1%}" if min(dec) == max(dec) else f"{min(dec):.1%}-{max(dec):.1%}"
        what = (
            f"prefill {self.encoder_mfu:.0%} (audio encoder) / {self.llm_mfu:.0%} (LLM) of bf16 peak, "
            f"decode {span} of memory bandwidth"
        )
        return f"{'measured' if self.measured else 'assumed'}: {what}; {self.source}"


ASSUMED = Efficiency(
    0.5, 0.5, ((1, 0.7),), (), False, "no GPU results committed under bench/results/gpu-*/results.json"
)


def _kv_bytes(s: TextShape, layer: int, full: float, kept: float, extra: float) -> float:
    """One sequence's cache: layers < layer at the full length, the rest at the kept length, + extra tokens."""
    return kv_bytes_per_token(s) * (layer * (full + extra) + (s.layers - layer) * (kept + extra))


def _retain_of(method: str) -> float:
    return 1.0 if method == "vanilla" else float(method.rsplit("-", 1)[1])


def measured_efficiency(results) -> Efficiency:
    """Efficiencies of a `bench.gpu_results.GPUResults` against its GPU's datasheet (GPUS[gpu_key]): the encoder's
    and the LLM's prefill FLOP/s over bf16 peak, and each measured decode step's bytes (weights + the batch's mean
    KV cache over the run's new tokens) per second over the memory bandwidth."""
    d = results.data
    gpu, shape = GPUS[d["gpu_key"]], SHAPES[d["shape"]]
    s, layer = shape.text, d["layer"]
    enc_ms = d["encoder_ms_per_chunk"].get("engine", d["encoder_ms_per_chunk"].get("stock"))
    encoder_mfu = audio_encoder_flops(shape.encoder, d["chunk_s"]) / (enc_ms / 1e3) / gpu.bf16_flops
    full = d["input_tokens"]
    llm_s = d.get("llm_prefill_s", {}).get("vanilla")
    if llm_s is None:  # the whole batch-1 prefill less the encoder
        llm_s = results.per_batch("prefill_s", "vanilla")[1] - enc_ms / 1e3
    llm_mfu = prefill_flops(s, full, full, layer)["total"] / llm_s / gpu.bf16_flops
    weights = text_params(s) * BF16
    text = full - d["audio_tokens"]
    tables: dict[bool, dict[int, list[float]]] = {False: {}, True: {}}
    for method in d["decode_ms_per_step"]:
        retain = _retain_of(method)
        kept = math.floor(d["audio_tokens"] * retain + 1e-9) + text
        for b, ms in results.per_batch("decode_ms_per_step", method).items():
            step_bytes = weights + b * _kv_bytes(s, layer, full, kept, d["new_tokens"] / 2)
            tables[retain < 1].setdefault(b, []).append(step_bytes / (ms / 1e3) / gpu.bandwidth)
    # several pruned methods at one batch: their mean (the step is host-bound, not method-bound, today)
    decode, pruned = (
        tuple((b, sum(v) / len(v)) for b, v in sorted(tables[p].items())) for p in (False, True)
    )
    return Efficiency(encoder_mfu, llm_mfu, decode, pruned, True, results.source)


def efficiency(results_root: Path | None = None) -> Efficiency:
    """Efficiencies from the newest committed GPU results (bench/results/gpu-*/results.json), else ASSUMED."""
    from bench.gpu_results import load_latest

    results = load_latest(results_root)
    return ASSUMED if results is None else measured_efficiency(results)


def throughput(
    shape: LALMShape,
    gpu: GPU,
    chunk_s: float = 300.0,
    retain: float = 1.0,
    batch: int = 1,
    tokens_per_audio_s: float = 3.0,
    layer: int = 2,
    max_new_tokens: int | None = None,
    efficiency: Efficiency = ASSUMED,
    memory_fraction: float = 0.9,
) -> dict:
    """Audio-hours per GPU-hour for `batch` chunks of `chunk_s` seconds at `retain` (1.0: unpruned)."""
    s = shape.text
    audio = int(chunk_s * 25)  # Qwen2.5-Omni: 25 audio tokens per second
    kept_audio = math.floor(audio * retain + 1e-9)
    full, kept = audio + PROMPT_TOKENS, kept_audio + PROMPT_TOKENS
    decode = math.ceil(tokens_per_audio_s * chunk_s)
    if max_new_tokens is not None:
        decode = min(decode, max_new_tokens)

    def kv(extra: float) -> float:  # one sequence's cache with `extra` generated tokens
        return _kv_bytes(s, layer, full, kept, extra)

    params = text_params(s)
    weights = params * BF16
    max_batch = max(0, int((gpu.memory * memory_fraction - weights) // kv(decode)))
    b = min(batch, max_batch)
    if b < 1:
        return {"batch": 0, "max_batch": max_batch, "audio_hours_per_gpu_hour": 0.0}
    encoder = audio_encoder_flops(shape.encoder, chunk_s)
    llm = prefill_flops(s, full, kept, layer)["total"]
    prefill_s = encoder / (gpu.bf16_flops * efficiency.encoder_mfu) + llm / (
        gpu.bf16_flops * efficiency.llm_mfu
    )
    step_bytes = weights + b * kv(decode / 2)
    step_s = max(
        step_bytes / (gpu.bandwidth * efficiency.decode_at(b, retain < 1)),
        2 * params * b / (gpu.bf16_flops * efficiency.llm_mfu),
    )
    batch_s = b * prefill_s + decode * step_s
    return {
        "batch": b,
        "max_batch": max_batch,
        "decode_tokens": decode,
        "prefill_s": prefill_s,
        "step_ms": step_s * 1e3,
        "kv_gb_per_chunk": kv(decode) / 1e9,
        "audio_hours_per_gpu_hour": b * chunk_s / batch_s,
    }


def cost_table(
    shape_key: str,
    gpu_key: str,
    chunk_s: float = 300.0,
    tokens_per_audio_s: float = 3.0,
    efficiency: Efficiency = ASSUMED,
) -> str:
    """Markdown: audio-hours per GPU-hour by batch and retain (the README/docs table)."""
    shape, gpu = SHAPES[shape_key], GPUS[gpu_key]
    batches = (1, 4, 16, 64, 256)
    lines = [
        f"{shape.name} on {gpu.name}, {chunk_s:g}-s chunks, {tokens_per_audio_s:g} tokens per audio second; "
        f"efficiencies {efficiency.describe()}:",
        "",
        "| retain | " + " | ".join(f"batch {b}" for b in batches) + " | largest batch that fits |",
        "|---|" + "---|" * (len(batches) + 1),
    ]
    for retain in (1.0, 0.4):
        row = [
            throughput(shape, gpu, chunk_s, retain, b, tokens_per_audio_s, efficiency=efficiency)
            for b in batches
        ]
        cells = [
            f"{r['audio_hours_per_gpu_hour']:,.0f}" + ("*" if r["batch"] < b else "")
            for r, b in zip(row, batches)
        ]
        lines.append(f"| {retain:g} | " + " | ".join(cells) + f" | {row[0]['max_batch']} |")
    lines.append("")
    lines.append("\\* capped at the largest batch that fits in memory.")
    return "\n".join(lines)


def format_dry_run(
    plan, gpu_key: str = "h100", tokens_per_audio_s: float = 3.0, results_root: Path | None = None
) -> str:
    """The `jobs.run --dry-run` report: the archive, then estimated GPU-hours for 3B and 7B at the run's retain,
    with efficiencies from the newest committed GPU results under `results_root` (default bench/results), and
    whether they were measured or assumed."""
    if gpu_key not in GPUS:
        from pipeline.options import UsageError

        raise UsageError(f"--gpu must be one of {', '.join(GPUS)}, got {gpu_key!r}")
    gpu = GPUS[gpu_key]
    eff = efficiency(results_root)
    retain = 1.0 if plan.method == "vanilla" else plan.retain
    lines = [
        f"sources          {plan.sources}"
        + (f" ({plan.unknown} without a readable duration)" if plan.unknown else ""),
        f"audio hours      {plan.audio_s / 3600:.3f}",
        f"chunks           {plan.chunks} (window {plan.window_s:g} s)",
        f"audio tokens     {plan.audio_tokens:,} ({plan.tokens_per_s:g} per second for {plan.model})",
        f"estimate on      {gpu.name}, retain {retain:g}, {tokens_per_audio_s:g} output tokens per audio second",
        f"efficiencies     {eff.describe()}",
    ]
    if plan.chunks:
        mean_chunk = plan.audio_s / plan.chunks
        for shape in SHAPES.values():
            best = throughput(
                shape,
                gpu,
                mean_chunk,
                retain,
                min(256, plan.chunks),
                tokens_per_audio_s,
                plan.layer,
                plan.max_new_tokens,
                eff,
            )
            one = throughput(
                shape, gpu, mean_chunk, retain, 1, tokens_per_audio_s, plan.layer, plan.max_new_tokens, eff
            )
            hours = [plan.audio_s / 3600 / r["audio_hours_per_gpu_hour"] for r in (best, one)]
            lines.append(
                f"{shape.name:<16} {hours[0]:.4g} GPU-hours at batch {best['batch']} ({hours[1]:.4g} at batch 1)"
            )
    kind = "measured" if eff.measured else "assumed"
    lines.append(
        f"({kind} estimate: roofline x {kind} efficiencies, bench/cost.py, docs/performance.md; "
        "nothing was run or written)"
    )
    return "\n".join(lines)


if __name__ == "__main__":  # python -m bench.cost: the tables of docs/performance.md
    _measured = efficiency()
    print(f"efficiencies {_measured.describe()}", end="\n\n")
    for _shape in SHAPES:
        for _gpu in ("h100", "h200"):
            print(cost_table(_shape, _gpu, efficiency=_measured), end="\n\n")
    print(cost_table("qwen2.5-omni-3b", "h200", efficiency=ASSUMED), end="\n\n")
