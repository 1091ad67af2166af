"""Performance benchmark: `python -m jobs.bench [prefill|routing|memory|pipeline|gating|batch|loop|continuous|all] [--quick] [--full-size] --out DIR`.

prefill  every method at retain 0.7/0.4/0.1 on 1500 and 7500 audio tokens (1 and 5 minutes), interleaved rounds,
         medians; measured speed-up over vanilla next to the FLOP bound (bench.flops) and their ratio.
routing  the same timing for vanilla and HeadRouter only: time inside the pruning hook at layer M (probe + routing
         + selection + slicing) as a share of the vanilla prefill (prefill reports it for every method too).
memory   KV-cache bytes and the prefill's peak memory per method and retain (CPU: peak RSS in a fresh process
         per configuration; GPU: peak allocated).
pipeline Ray Data end to end vs the model alone on the same chunks (1 and 2 actors), decode + chunk + features
         real-time factor per core, decode-and-chunk peak memory for 5-, 30- and 120-minute inputs.
loop     the engine's own decode loop vs transformers' generate (CPU per step, eager and compiled, batch 1 and 4,
         a 36-layer hidden-64 model) and the audio encoder with one attention call per window length (bench/loop.py).
continuous  continuous vs static batching at the same slot count, forced output lengths 20-1,000 tokens,
         vanilla and HeadRouter 0.4: audio-s per s and slot occupancy (bench/continuous.py).
gating   window gating (skip_silence=energy): prefill with the audio encoder on 300-s chunks with 0/30/60% empty
         2-s windows, gated vs not, as speed-ups beside the FLOP ratios (encoder included; bench/gating.py).
Writes DIR/bench.json and DIR/bench.md (bench.suite). No timing is asserted anywhere; targets are reported,
met or missed. Exit codes: 0 written, 2 bad arguments (e.g. --full-size without a CUDA GPU).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bench.suite import SUBCOMMANDS, run


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.bench", description=__doc__.split("\n")[0])
    p.add_argument("what", nargs="?", default="all", choices=tuple(SUBCOMMANDS))
    p.add_argument("--quick", action="store_true", help="tiny shapes and inputs (the smoke test; seconds)")
    p.add_argument("--full-size", action="store_true", help="the real 3B text shape in bfloat16 on CUDA")
    p.add_argument("--out", type=Path, default=Path("out/bench"), help="folder for bench.json and bench.md")
    p.add_argument(
        "--hidden",
        type=int,
        help="width of the scaled CPU model (default 256, 64 with --quick; heads stay 16); "
        "--full-size ignores it (2048)",
    )
    p.add_argument(
        "--layers",
        type=int,
        help="decoder layers of the scaled CPU model (default 24 of the 3B's 36, 6 with --quick); "
        "--full-size ignores it (36)",
    )
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
    command = "python -m jobs.bench " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        results = run(args.what, args.quick, args.full_size, args.out, overrides, command)
    except ValueError as e:
        print(f"jobs.bench: error: {e}", file=sys.stderr)
        return 2
    print((args.out / "bench.md").read_text())
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
