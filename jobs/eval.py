"""Pruning quality benchmark: methods x retain ratios on a manifest, as % of the unpruned model.

    python -m jobs.eval --model tiny-synth --manifest /work/data/synth/test.jsonl --out results/tiny-synth \\
        --methods vanilla random frame fastv dart headrouter headrouter-hard headrouter-norouter \\
                  headrouter-noprefilter --retain 0.7 0.4 0.1 [--per-task 40] [--seed 0] \\
        [--budget fixed adaptive] [--match-kept]

Writes to --out: samples.csv.gz (one row per method, retain and sample: the source of every number),
table.csv and table.md (the paper's Table 1 layout: per-task scores, average as % of vanilla with a paired
bootstrap 95% interval, mean prefill time, KV cache kept), pareto.png (average vs prefill time and vs KV memory)
and routing.png (mean routing coefficients per task, the paper's Figure 7). Metrics: quality/metrics.py.
Manifest audio must be 16 kHz mono wav/flac; the prompt is the row's `prompt`, else question + choices.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from quality.eval import EvalOptions, read_samples, run_eval, set_threads, write_reports

log = logging.getLogger("jobs")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--methods", nargs="+", default=list(EvalOptions.methods))
    p.add_argument("--retain", nargs="+", type=float, default=list(EvalOptions.retain))
    p.add_argument("--per-task", type=int, default=None, help="at most this many samples per task (seeded)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layer", type=int, default=2)
    p.add_argument(
        "--profiles", default=None, help="profiles JSON (default: the model folder's, else uniform)"
    )
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument(
        "--budget",
        nargs="+",
        default=["fixed"],
        choices=["fixed", "adaptive"],
        dest="budgets",
        help="budget rules to run (adaptive: the scored methods only)",
    )
    p.add_argument(
        "--match-kept",
        action="store_true",
        help="run adaptive budgets at the retain that keeps as many of these clips' audio tokens as fixed ones",
    )
    p.add_argument(
        "--address", default=os.environ.get("RAY_ADDRESS"), help="Ray cluster (default: run locally)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1: more measured 25x slower on 2 shared cores)",
    )
    p.add_argument("--report-only", action="store_true", help="rebuild the reports from --out/samples.csv.gz")
    args = p.parse_args(argv)
    if args.report_only:
        write_reports(
            read_samples(Path(args.out) / "samples.csv.gz"), Path(args.out), args.resamples, args.seed
        )
        return
    del args.report_only
    address = args.__dict__.pop("address")
    set_threads(args.__dict__.pop("threads"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    opts = EvalOptions(**{**vars(args), "methods": tuple(args.methods), "retain": tuple(args.retain),
                          "budgets": tuple(args.budgets)})  # fmt: skip
    samples = run_eval(opts, address)
    table = write_reports(samples, Path(opts.out), opts.resamples, opts.seed)
    print((Path(opts.out) / "table.md").read_text())
    log.info("wrote %s (%d configurations)", opts.out, len(table))


if __name__ == "__main__":
    main()
