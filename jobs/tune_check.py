"""Validate jobs.tune against reference answers: `python -m jobs.tune_check --manifest M --tune DIR
[--holdout-manifest M2 --holdout-tune DIR2] --out DIR` (library: quality/tune_check.py).

--tune DIR is a jobs.tune output on manifest M (with answers): per retain and task family, agreement with the
unpruned answers beside the true score change. --holdout-tune DIR2 is a jobs.tune output on a separate split M2 run
with --retain set to DIR's recommendations (one per --target, by the rule DIR's recommendation followed: score kept
or agreement): is each retain's score >= the target share of vanilla's there? (Retain 1.0 reproduces vanilla
exactly, so its rows are vanilla's.)
Writes DIR/validation.json and DIR/validation.md and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.tune import recommend
from quality.tune_check import holdout_check, markdown, relation_table, scored_rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.tune_check", description=__doc__.split("\n\n")[1])
    p.add_argument("--manifest", required=True, help="manifest jobs.tune ran on, with an answer per row")
    p.add_argument("--tune", required=True, help="jobs.tune output folder on --manifest")
    p.add_argument("--holdout-manifest", help="a separate split's manifest")
    p.add_argument("--holdout-tune", help="jobs.tune output on --holdout-manifest at the recommended retain")
    p.add_argument(
        "--target", type=float, nargs="+", help="targets to recommend for (default: the tune's own)"
    )
    p.add_argument("--out", required=True, help="folder for validation.json and validation.md")
    a = p.parse_args(argv)
    rec = json.loads((Path(a.tune) / "recommendation.json").read_text())
    table = json.loads((Path(a.tune) / "table.json").read_text())["rows"]
    relation = relation_table(scored_rows(a.tune, a.manifest))
    holdout = []
    if a.holdout_tune:
        rows = scored_rows(a.holdout_tune, a.holdout_manifest or a.manifest)
        for target in a.target or [rec["target"]]:
            retain = recommend(table, target, rec.get("target_on", "agreement"))["retain"]
            holdout.append(holdout_check(rows, retain, target))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"recommendation": rec, "relation": relation, "holdout": holdout}
    (out / "validation.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(relation, holdout)
    (out / "validation.md").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
