"""A self-contained HTML report of a pipeline output, from its Parquet alone.

    python -m jobs.report OUTPUT [--out report.html] [--s3-endpoint URL]

Plots (inline PNG): throughput over the run, latency distribution, tokens kept vs retain, routing coefficients per
task (the paper's Figure 7); built by monitoring.report. Exit status: 0 written, 2 bad arguments or no chunk rows.
"""

from __future__ import annotations

import argparse
import logging
import sys

from monitoring.report import NoChunks, write_report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.report", description=__doc__.splitlines()[0])
    p.add_argument("output", help="the --output of jobs.run (local folder or s3://bucket/prefix)")
    p.add_argument(
        "--out", default=None, help="HTML file (default OUTPUT/report.html, or ./report.html for s3)"
    )
    p.add_argument("--s3-endpoint", default=None)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    try:
        info = write_report(a.output, a.out, a.s3_endpoint)
    except NoChunks as e:
        print(f"jobs.report: error: {e}", file=sys.stderr)
        return 2
    print(f"report: {info.path} ({info.chunks} chunks, {info.sources} sources)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
