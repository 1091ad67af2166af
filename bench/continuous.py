"""`python -m jobs.bench continuous`: continuous batching vs static batching at the same slot count.

Workload: chunks whose output lengths follow a wide, seeded distribution (30% 20-60 tokens, 50% 300-600, 20%
800-1,000), each length forced per request (min_new_tokens = max_new_tokens = its length: no end-of-sequence
before it, and the row ends there). Both runs use `LALM.stream` with S slots: static batching refills only when
every slot is free (what `generate` does with a batch of S: it decodes until its longest row ends), continuous
uses the stream's refill rule (`headrouter.engine.stream`: 1/16 of the slots free). Same requests, same order; tokens compared per chunk. Reported:
audio seconds per second (process CPU time on CPU, one torch thread; wall time on CUDA) and slot occupancy
during decode (the share of slot-steps that chose a request's token).
"""

from __future__ import annotations

import logging
import random
import tempfile
import time
from pathlib import Path

log = logging.getLogger("bench")

__all__ = ["continuous_targets", "forced_lengths", "render_continuous", "run_continuous"]

BANDS = ((0.3, 20, 60), (0.5, 300, 600), (0.2, 800, 1000))  # (share, fewest, most) output tokens


def forced_lengths(n: int, seed: int = 0, scale: float = 1.0) -> list[int]:
    """n output lengths from BANDS (seeded), each multiplied by `scale` (at least 1)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        u, acc = rng.random(), 0.0
        for share, lo, hi in BANDS:
            acc += share
            if u < acc or (share, lo, hi) == BANDS[-1]:
                out.append(max(1, round(rng.randint(lo, hi) * scale)))
                break
    return out


def _clock(cuda: bool) -> float:
    import torch

    if cuda:
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


def compare(lalm, chunk_s: float, slots: int, lengths: list[int]) -> list[dict]:
    """Per method: static and continuous runs of the same requests -> rows (seconds, audio-s per s, occupancy)."""
    from bench.batch import _clips
    from headrouter import PruneOptions
    from headrouter.engine.stream import Request, StreamStats

    cuda = lalm.device.type == "cuda"
    audios = _clips(chunk_s, len(lengths))
    requests = [
        Request(i, audios[i], lalm.asr_prompt, max_new_tokens=n, min_new_tokens=n)
        for i, n in enumerate(lengths)
    ]
    top = max(lengths)
    rows = []
    for method, retain in (("vanilla", 1.0), ("headrouter", 0.4)):
        opts = PruneOptions(method=method, retain=retain)
        tokens = {}
        for mode, fraction in (("static", 1.0), ("continuous", 1 / 16)):
            stats = StreamStats()
            t0 = _clock(cuda)
            outs = dict(lalm.stream(requests, opts, top, slots=slots, refill_fraction=fraction, stats=stats))
            seconds = _clock(cuda) - t0
            tokens[mode] = {k: o.token_ids for k, o in outs.items()}
            assert all(len(tokens[mode][i]) == n for i, n in enumerate(lengths)), "forced lengths"
            rows.append({
                "method": method, "retain": retain, "mode": mode, "slots": slots, "requests": len(lengths),
                "seconds": seconds, "audio_s_per_s": len(lengths) * chunk_s / seconds,
                "occupancy": stats.occupancy, "steps": stats.steps, "refills": stats.refills,
                "prefill_s": sum(o.prefill_s for o in outs.values()),
                "decode_s": sum(o.decode_s for o in outs.values()),
            })  # fmt: skip
            log.info("continuous: %s %s %.1f s, occupancy %.2f", method, mode, seconds, stats.occupancy)
        same = tokens["static"] == tokens["continuous"]
        rows[-1]["same_tokens_as_static"] = rows[-2]["same_tokens_as_static"] = same
        rows[-1]["speedup_vs_static"] = rows[-1]["audio_s_per_s"] / rows[-2]["audio_s_per_s"]
    return rows


def run_continuous(run) -> None:
    """The `continuous` subcommand's runner (bench.suite.SUBCOMMANDS)."""
    import torch

    from bench.pipeline import save_bench_model
    from headrouter import load_lalm

    quick = run.results.get("quick")
    with tempfile.TemporaryDirectory(prefix="hr-bench-continuous-") as tmp:
        if run.full_size:  # the 3B shape at 64 slots, three slot-fulls of requests
            lalm, chunk_s, slots, n, scale, layers, hidden = run.bench().lalm, 300.0, 64, 192, 1.0, None, None
        else:
            layers, hidden = (4, 64) if quick else (12, 64)
            lalm = load_lalm(str(save_bench_model(Path(tmp) / f"deep-{layers}l", hidden, layers)))
            chunk_s, slots, n, scale = (5.0, 4, 8, 0.02) if quick else (60.0, 8, 48, 1.0)
        lengths = forced_lengths(n, seed=0, scale=scale)
        res = {
            "model": f"Qwen2.5-Omni thinker, {lalm.num_layers} layers, hidden {lalm.model.config.text_config.hidden_size}",
            "threads": torch.get_num_threads(),
            "device": str(lalm.device),
            "chunk_s": chunk_s,
            "slots": slots,
            "lengths": lengths,
            "rows": compare(lalm, chunk_s, slots, lengths),
        }
    run.results["continuous"] = res


def continuous_targets(res: dict) -> list[dict]:
    """Issue 21's targets: continuous >= 1.6x static's audio-s per s; occupancy >= 85% during decode."""
    cont = res.get("continuous")
    if not cont or res.get("quick"):
        return []
    rows = [r for r in cont["rows"] if r["mode"] == "continuous"]
    static = {r["method"]: r for r in cont["rows"] if r["mode"] == "static"}
    where = "GPU" if cont["device"].startswith("cuda") else "CPU"
    same = "same tokens" if all(r["same_tokens_as_static"] for r in rows) else "TOKENS DIFFER"
    return [
        {
            "target": f"continuous >= 1.6x static audio-s per s ({where}, {cont['slots']} slots)",
            "measured": ", ".join(
                f"{r['method']} {r['retain']:g}: {r['speedup_vs_static']:.2f}x" for r in rows
            ),
            "met": min(r["speedup_vs_static"] for r in rows) >= 1.6,
            "note": same,
        },
        {
            "target": "slot occupancy during decode >= 85% (static beside it)",
            "measured": ", ".join(
                f"{r['method']}: {r['occupancy']:.0%} (static {static[r['method']]['occupancy']:.0%})"
                for r in rows
            ),
            "met": min(r["occupancy"] for r in rows) >= 0.85,
            "note": "",
        },
    ]


def render_continuous(res: dict) -> str:
    cont = res.get("continuous")
    if not cont:
        return ""
    lines = [
        f"\n## Continuous batching\n\nModel: {cont['model']} on {cont['device']}, {cont['threads']} torch "
        f"thread(s), {len(cont['lengths'])} chunks of {cont['chunk_s']:g} s, {cont['slots']} slots, forced output "
        f"lengths {min(cont['lengths'])}-{max(cont['lengths'])} tokens (mean {sum(cont['lengths']) / len(cont['lengths']):.0f}).\n\n",
        "| method | batching | s | audio-s per s | vs static | occupancy | decode steps | refills | same tokens |\n"
        "|---|---|---|---|---|---|---|---|---|\n",
    ]
    for r in cont["rows"]:
        speed = f"{r['speedup_vs_static']:.2f}x" if "speedup_vs_static" in r else ""
        lines.append(
            f"| {r['method']} {r['retain']:g} | {r['mode']} | {r['seconds']:.1f} | {r['audio_s_per_s']:.1f} | "
            f"{speed} | {r['occupancy']:.0%} | {r['steps']} | {r['refills']} | {r['same_tokens_as_static']} |\n"
        )
    return "".join(lines)
