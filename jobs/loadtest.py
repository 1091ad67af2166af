"""Load run (a benchmark outside `make test`): many short files, then one very long archive, through the pipeline.

    python -m jobs.loadtest [--files 2000] [--hours 10] [--workdir /tmp/headrouter-load] [--json out.json]

Checks (bench.loadrun) that the run completes, memory (the driver plus every Ray process it started) stays
bounded and does not grow with hours processed, the model's time per chunk does not grow, and every row is
present (one files/ row per source; the archive's chunks cover it with no gap). Exit codes: 0 pass, 1 fail.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from bench.loadrun import LoadOptions, format_report, load_run
from pipeline.cli import workers_range


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.loadtest", description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--hours", type=float, default=10.0)
    p.add_argument("--workdir", default="/tmp/headrouter-load")
    p.add_argument("--model", default="tiny-random")
    p.add_argument("--workers", default="1..2", type=workers_range, help="actor pool size MIN..MAX (or N)")
    p.add_argument("--batch-size", type=int, default=16, help="chunks per model call for the short files")
    p.add_argument("--archive-batch-size", type=int, default=2, help="chunks per model call for the archive")
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--json", default=None, help="write the figures here as JSON")
    a = vars(p.parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    out = a.pop("json")
    report = load_run(LoadOptions(**a))
    if out:
        Path(out).write_text(json.dumps(report, indent=2) + "\n")
    print(format_report(report))
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
