"""Fixed vs adaptive budgets at matched measured kept fractions (quality/budget_report.py), one section per split.

    python -m jobs.budget_report --model-folder models/tiny-synth --split test-seed2=results/tiny-synth-budget/test-seed2 \\
        [--split NAME=DIR ...] [--resamples 1000] [--seed 0] --out results/tiny-synth-budget/budget.md

Each DIR holds a samples.csv.gz of `jobs.eval --budget fixed adaptive --match-kept`. Writes the markdown and a
JSON file beside it (same name, .json).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from quality.budget_report import LayerShape, compare_budgets, format_budget_table
from quality.eval import read_samples


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", action="append", required=True, metavar="NAME=DIR")
    p.add_argument("--model-folder", default="models/tiny-synth", help="config.json for the FLOP count")
    p.add_argument("--layer", type=int, default=2)
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    shape = LayerShape.from_folder(args.model_folder, args.layer)
    parts, data = [], {}
    for spec in args.split:
        name, _, folder = spec.partition("=")
        rows = compare_budgets(
            read_samples(Path(folder) / "samples.csv.gz"), shape, args.resamples, args.seed
        )
        parts.append(format_budget_table(rows, name))
        data[name] = rows
    out = Path(args.out)
    out.write_text("\n".join(parts))
    out.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
