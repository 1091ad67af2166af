"""Calibrate HeadRouter profiles for a model (headrouter.calibration): head weights, routing centers, bandwidth.

    python -m jobs.calibrate --model tiny-synth --manifest /work/data/synth/calib.jsonl [--seed 0]
        [--ablation-samples 24] [--routing-samples 10] [--router-samples 60] [--retain 0.4] [--layer 2]
        [--temperature 0.1] [--device cuda] [--dtype bfloat16] [--ablation-batch 0] [--out FILE]

Manifest rows need `audio`, `category` (semantic|acoustic), `answer` and `prompt` (or `question` and `choices`).
Per category, rows are drawn with a seeded permutation (ablation, routing-center and router samples are the
first N of it). Device: cuda when available (bfloat16), else cpu (float32). One seed gives one file.
How the ablation becomes head weights: headrouter/calibration.py. Exit codes: 0 written, 2 bad input.
"""

from __future__ import annotations

import argparse
import logging
import sys

from headrouter.calibration import CalibrateOptions, calibrate


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m jobs.calibrate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True)
    p.add_argument("--manifest", required=True)
    for name, field in CalibrateOptions.__dataclass_fields__.items():
        if name not in ("model", "manifest"):
            kind = str if field.default is None else type(field.default)
            p.add_argument("--" + name.replace("_", "-"), type=kind, default=field.default)
    opts = CalibrateOptions(**vars(p.parse_args(argv)))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        calibrate(opts)
    except (ValueError, FileNotFoundError) as e:
        print(f"calibrate: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
