"""Nightly mode: process what arrived since the last successful night, under a dated output prefix.

    python -m jobs.nightly --input s3://archive/incoming/ --output s3://results/nightly/ [--date 2026-11-28]
        [--by modified|partition] [--settle-seconds 300] [pipeline flags: --model --retain --workers ...]

--by modified (default) takes objects modified since the watermark, up to the end of the night or the storage clock
less --settle-seconds; --by partition takes the date partitions INPUT/YYYY-MM-DD/ after the watermark. The
watermark, crash recovery and output layout are described in pipeline.nightly. Exit status: 0 ok, 1 the pipeline
failed too many sources, 2 bad arguments or state, 3 storage or cluster unreachable.
"""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import UTC, date, datetime, timedelta

from pipeline.nightly import NightlyOptions, run_nightly, summary_line
from pipeline.options import RunFailed, UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, as jobs.run
        raise UsageError(message)


def _parser() -> _Parser:
    p = _Parser(
        prog="python -m jobs.nightly",
        description=__doc__.split("\n\n")[0],
        epilog="Every other flag is passed to the pipeline as for python -m jobs.run (--model, --method, --retain, "
        "--task, --workers, --gpus-per-worker, --batch-size, --max-error-fraction, --retry-errors, --s3-endpoint, "
        "--address, --pushgateway, --job-name (default headrouter-nightly), ...): see python -m jobs.run --help.",
    )
    p.add_argument("--input", required=True, help="folder or s3://bucket/prefix the archive grows under")
    p.add_argument("--output", required=True, help="results root; nights go to OUTPUT/YYYY-MM-DD/")
    p.add_argument(
        "--date", type=date.fromisoformat, help="the night to run, YYYY-MM-DD (default: yesterday, UTC)"
    )
    p.add_argument(
        "--by", choices=("modified", "partition"), default="modified", help="how new files are found"
    )
    p.add_argument(
        "--since", type=date.fromisoformat, help="first night only: skip what arrived before this day"
    )
    p.add_argument(
        "--settle-seconds", type=float, default=300.0, help="leave uploads younger than this (300)"
    )
    return p


def parse_args(argv: list[str] | None = None) -> tuple[NightlyOptions, float]:
    """NightlyOptions from the command line; pipeline flags are parsed by jobs.run's own parser."""
    from jobs.run import parse_args as run_parse_args

    a, rest = _parser().parse_known_args(argv)
    if a.settle_seconds < 0:
        raise UsageError("--settle-seconds must be >= 0")
    if "--run-id" in rest or any(r.startswith("--run-id=") for r in rest):
        raise UsageError("--run-id is chosen per night by jobs.nightly")
    run, commit_every_s = run_parse_args(
        ["--job-name", "headrouter-nightly", *rest, "--input", a.input, "--output", a.output]
    )
    night = a.date or (datetime.now(UTC).date() - timedelta(days=1))
    return NightlyOptions(
        a.input, a.output, night, a.by, a.settle_seconds, run, a.since, commit_every_s
    ), commit_every_s


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr
    )
    try:
        opts, _ = parse_args(argv)
        result = run_nightly(opts)
    except UsageError as e:
        print(f"jobs.nightly: error: {e}", file=sys.stderr)
        return 2
    except (RunFailed, OSError) as e:
        print(f"jobs.nightly: failed: {' '.join(str(e).split())[:300]}", file=sys.stderr)
        return 3
    print(summary_line(opts, result))
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
