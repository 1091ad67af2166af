"""Calibrate the adaptive budget (PruneOptions.budget = "adaptive") of a model: headrouter/budget_calibration.py.

    python -m jobs.calibrate_budget --model tiny-synth --manifest /work/data/synth-calib600/calib.jsonl
        [--methods headrouter fastv ...] [--samples 600] [--seed 0] [--power 1] [--profiles FILE] [--out FILE]

One prefill per clip and scoring method; per method and retain (0.05 ... 0.95) the threshold on the share of a
clip's importance that keeps `retain` of the split's audio tokens. Written into the profiles file (the model
folder's headrouter_profiles.json unless --out), the rest of it unchanged. Exit codes: 0 written, 2 bad input.
"""

from __future__ import annotations

import argparse
import logging
import sys

from headrouter.budget_calibration import SCORED_METHODS, BudgetCalibrateOptions, calibrate_budget


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m jobs.calibrate_budget",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", default=None)
    p.add_argument("--profiles", default=None)
    p.add_argument("--methods", nargs="+", default=list(SCORED_METHODS), choices=SCORED_METHODS)
    p.add_argument("--samples", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--power", type=float, default=1.0, help="sharpening exponent of the importance")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        calibrate_budget(BudgetCalibrateOptions(**{**vars(args), "methods": tuple(args.methods)}))
    except (ValueError, FileNotFoundError) as e:
        print(f"calibrate_budget: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
