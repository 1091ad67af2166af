"""Routing report: how much of the oracle's headroom each router recovers, per split and retain ratio.

    python -m jobs.routing_report --split test-seed2=results/tiny-synth-routing/test-seed2 \\
        --split test-seed7=results/tiny-synth-routing/test-seed7 --out results/tiny-synth-routing/headroom.md

Each --split NAME=DIR names a `jobs.eval` output folder (its samples.csv.gz) that holds vanilla, headrouter,
headrouter-norouter and headrouter-oracle rows (headrouter-hard and headrouter-learned when present). Writes a
Markdown table: average (% of vanilla), headroom = oracle - norouter, share of it recovered, and the paired
bootstrap difference to the paper's router (`quality/headroom.py`); and per split, next to --out,
routing-NAME.png: mean alpha per task for each router (soft, hard, learned, oracle).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from quality.eval import read_samples
from quality.headroom import headroom_table, routing_figure
from quality.metrics import summarize


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", action="append", required=True, help="NAME=DIR of a jobs.eval output")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "| Split | Retain | Router | Avg. (% vanilla) | Headroom (oracle - norouter) | Recovered | vs headrouter (95% CI) |",
        "|---|---|---|---|---|---|---|",
    ]
    for spec in args.split:
        name, _, folder = spec.partition("=")
        samples = read_samples(Path(folder) / "samples.csv.gz")
        table = summarize(samples, resamples=args.resamples, seed=args.seed)
        routing_figure(samples, args.out.parent / f"routing-{name}.png", title=name)
        for r in headroom_table(table, samples, args.resamples, args.seed):
            d, lo, hi = r["vs_paper"]
            rec = f"{100 * r['recovered']:.0f}%" if r["recovered"] == r["recovered"] else "no headroom"
            vs = "-" if r["router"] == "headrouter" else f"{d:+.1f} ({lo:+.1f} to {hi:+.1f})"
            lines.append(f"| {name} | {r['retain']:g} | {r['router']} | {r['avg']:.1f}% | {r['headroom']:+.1f} | "
                         f"{rec} | {vs} |")  # fmt: skip
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
