"""Main batch job: `python -m jobs.run --input URI --output URI [options]` (reference: docs/pipeline.md).

Exit codes: 0 every source accounted for and failures within --max-error-fraction; 1 too many sources failed;
2 a mistake in the arguments or input (one line on stderr); 3 the run could not proceed (storage, Ray, model).
"""

from __future__ import annotations

import logging
import sys

from pipeline.cli import format_summary, parse_run_args, run_metrics
from pipeline.options import RunFailed, RunOptions, UsageError


def parse_args(argv: list[str] | None = None) -> tuple[RunOptions, float]:
    """(RunOptions, seconds between commits) from the command line (jobs.nightly and the deploy check use it)."""
    request = parse_run_args(argv)
    return request.opts, request.commit_every_s


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr
    )
    from pipeline.runner import new_run_id, run_job

    metrics = None
    try:
        request = parse_run_args(argv)
        if request.dry_run:
            from bench.cost import format_dry_run
            from pipeline.dryrun import plan_archive

            print(format_dry_run(plan_archive(request.opts), request.gpu, request.tokens_per_audio_s))
            return 0
        opts = request.opts.replace(run_id=request.opts.run_id or new_run_id())
        metrics = run_metrics(opts)
        summary = run_job(opts, commit_every_s=request.commit_every_s, observer=metrics)
    except UsageError as e:
        print(f"jobs.run: error: {e}", file=sys.stderr)
        return 2
    except RunFailed as e:
        print(f"jobs.run: failed: {e}", file=sys.stderr)
        if metrics is not None:
            metrics.finish(success=False)
        return 3
    except KeyboardInterrupt:
        print("jobs.run: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    if metrics is not None:
        metrics.finish(success=summary.exit_code == 0, duration_s=summary.wall_s)
    print(format_summary(summary))
    if summary.exit_code:
        print(
            f"jobs.run: {summary.files_failed} of {summary.files_ok + summary.files_failed} sources failed "
            f"(> --max-error-fraction {opts.max_error_fraction})",
            file=sys.stderr,
        )
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
