"""Log-mel features of a generate call, before and after batching them in torch: per-300-s-chunk time.

python -m bench.features [--out DIR] [--device cpu|cuda] [--batches 1,8] [--rounds 5] [--seconds 300]

before: the stock WhisperFeatureExtractor on each clip alone (`headrouter.engine.audio.featurize`), then the
padded [B, 128, F] batch, as the engine built it until issue 20; after: `headrouter.engine.audio.log_mel` on
`--device` with its default slicing (what `LALM.prepare_batch` runs now: one clip per STFT on a CPU, the whole
call on a GPU); one pass: the whole call in one STFT. One torch thread, interleaved round by round; a ratio is
the median over rounds of before / after in the same round.
CPU: process CPU time. CUDA: `after` also on the device, synchronized; its host CPU time is reported beside the
wall time (the point on a GPU is that the host core is free). Writes bench.json and bench.md to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np


def _clips(batch: int, seconds: float) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    n = int(seconds * 16000) - 37  # not a multiple of the hop
    t = np.arange(n) / 16000
    return [
        (0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)
        for i in range(batch)
    ]


def _before(fe, clips):
    import torch

    from headrouter.engine.audio import featurize

    rows = [featurize(fe, a) for a in clips]  # [n_mels, F_i] each
    out = torch.zeros(len(rows), rows[0][0].shape[0], max(f.shape[1] for f, _ in rows))  # [B, n_mels, F]
    for i, (f, _) in enumerate(rows):
        out[i, :, : f.shape[1]] = f
    return out


def _after(fe, clips, device, slice_samples=None):
    from headrouter.engine.audio import log_mel

    return log_mel(fe, clips, [None] * len(clips), device, slice_samples)[0]  # [B, n_mels, F]


def _timed(fn, args, sync):
    cpu0, wall0 = time.process_time(), time.perf_counter()
    out = fn(*args)
    sync()
    return out, time.process_time() - cpu0, time.perf_counter() - wall0


def run(out: Path, device: str, batches: list[int], rounds: int, seconds: float) -> dict:
    import torch

    from headrouter.engine.audio import make_feature_extractor

    torch.set_num_threads(1)
    fe = make_feature_extractor(300.0)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    _after(fe, _clips(1, 1.0), device)  # one-time setup (FFT plans, CUDA context) outside the measurement
    _before(fe, _clips(1, 1.0))
    sync()
    rows = []
    for batch in batches:
        clips = _clips(batch, seconds)
        samples = []
        for r in range(rounds):
            order = ("before", "after", "one_pass") if r % 2 == 0 else ("one_pass", "after", "before")
            got = {}
            for name in order:
                fn, args = {
                    "before": (_before, (fe, clips)),
                    "after": (_after, (fe, clips, device)),
                    "one_pass": (_after, (fe, clips, device, 1 << 40)),
                }[name]
                got[name] = _timed(fn, args, sync)
            diff = max(float((got[k][0].cpu() - got["before"][0]).abs().max()) for k in ("after", "one_pass"))
            samples.append(
                {
                    "round": r,
                    "before_cpu_s": got["before"][1],
                    "before_wall_s": got["before"][2],
                    "after_cpu_s": got["after"][1],
                    "after_wall_s": got["after"][2],
                    "one_pass_cpu_s": got["one_pass"][1],
                    "one_pass_wall_s": got["one_pass"][2],
                    "max_abs_diff": diff,
                }
            )
        per_chunk = {
            k: statistics.median(s[k] for s in samples) / batch for k in samples[0] if k.endswith("_s")
        }
        ratio_key = "wall_s" if device.startswith("cuda") else "cpu_s"
        ratio = statistics.median(s[f"before_{ratio_key}"] / s[f"after_{ratio_key}"] for s in samples)
        ratio_one = statistics.median(s[f"before_{ratio_key}"] / s[f"one_pass_{ratio_key}"] for s in samples)
        rows.append(
            {
                "batch": batch,
                "per_chunk": per_chunk,
                "ratio": ratio,
                "ratio_one_pass": ratio_one,
                "ratio_of": ratio_key,
                "max_abs_diff": max(s["max_abs_diff"] for s in samples),
                "samples": samples,
            }
        )
    result = {
        "command": f"python -m bench.features --out {out} --device {device} "
        f"--batches {','.join(map(str, batches))} --rounds {rounds} --seconds {seconds:g}",
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": _commit(),
        "device": torch.cuda.get_device_name(0)
        if device.startswith("cuda")
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "seconds_per_chunk": seconds,
        "rows": rows,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "bench.md").write_text(_markdown(result))
    return result


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _markdown(result: dict) -> str:
    s = result["seconds_per_chunk"]
    lines = [
        f"# Log-mel features per {s:g}-s chunk, before and after batching in torch",
        "",
        f"`{result['command']}`, {result['date_utc']}, commit {result['commit']}, {result['device']}, "
        f"torch {result['torch']}, {result['torch_threads']} thread.",
        "",
        "| chunks per call | before: CPU ms per chunk | after: CPU ms | after: wall ms | before / after "
        "| one pass: CPU ms | one pass: wall ms | before / one pass | max abs difference |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        p = row["per_chunk"]
        lines.append(
            f"| {row['batch']} | {p['before_cpu_s'] * 1e3:.1f} | {p['after_cpu_s'] * 1e3:.1f} | "
            f"{p['after_wall_s'] * 1e3:.1f} | {row['ratio']:.2f}x | {p['one_pass_cpu_s'] * 1e3:.1f} | "
            f"{p['one_pass_wall_s'] * 1e3:.1f} | {row['ratio_one_pass']:.2f}x | {row['max_abs_diff']:.1e} |"
        )
    lines += [
        "",
        f"Per chunk: the call's time / chunks, median over rounds. Ratios: median over rounds of before / after in "
        f"the same round, by {result['rows'][0]['ratio_of'].replace('_s', '')} time. after: `log_mel` with its "
        "default slicing (one clip per STFT on a CPU, the whole call on a GPU); one pass: every clip of the call in "
        "one STFT.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.features", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="out/bench-features")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=300.0)
    args = ap.parse_args(argv)
    result = run(
        Path(args.out), args.device, [int(b) for b in args.batches.split(",")], args.rounds, args.seconds
    )
    print(_markdown(result))


if __name__ == "__main__":
    main()
