"""Choose retain from data: `python -m jobs.tune --input URI --output DIR [--sample N] [--retain 0.9 0.7 ...]
[--target 0.98] [pipeline flags: --model --method --task --workers ...]` (library: pipeline/tune.py).

A seeded sample of the archive's chunks runs unpruned and at each retain on the cluster (Ray Data, the main job's
decode stage and inference worker); prints agreement with vanilla (bootstrap 95% interval), prefill time and KV kept
per retain and, when the input manifest has an 'answer' per row, the score kept (pruned / unpruned score against the
answers, paired bootstrap 95% interval); recommends the lowest retain whose lower bound meets --target, on the score
kept when there are answers, else on agreement (--target-on chooses). Writes DIR/table.json,
DIR/recommendation.json (for jobs.run --retain-from) and DIR/chunks.parquet. Exit codes: 0 ok, 2 bad arguments,
3 the run could not proceed.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline.options import RunFailed, UsageError
from pipeline.tune import RETAINS, TuneOptions, format_table, run_tune


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, as jobs.run
        raise UsageError(message)


def parse_args(argv: list[str] | None = None) -> TuneOptions:
    from pipeline.cli import parse_run_args

    p = _Parser(
        prog="python -m jobs.tune",
        description=__doc__.split("\n\n")[1],
        epilog="Every other flag is passed to the pipeline as for python -m jobs.run (--model, --method, --layer, "
        "--task, --question, --workers, --gpus-per-worker, --batch-size, --s3-endpoint, --address, ...).",
    )
    p.add_argument("--input", required=True, help="folder, s3://bucket/prefix or manifest, as for jobs.run")
    p.add_argument("--output", required=True, help="folder or s3://bucket/prefix for the JSON files")
    p.add_argument("--sample", type=int, default=200, help="about how many chunks to sample (200)")
    p.add_argument("--retain", type=float, nargs="+", default=list(RETAINS), help="retain values to try")
    p.add_argument(
        "--target",
        type=float,
        default=0.98,
        help="share the 95%% lower bound must meet (score kept or agreement)",
    )
    p.add_argument(
        "--target-on",
        choices=["quality", "agreement"],
        default=None,
        help="recommend on the score kept against reference answers (default when every sampled row has an "
        "'answer') or on agreement with the unpruned answers (default otherwise)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the sample and the bootstrap")
    a, rest = p.parse_known_args(argv)
    request = parse_run_args([*rest, "--input", a.input, "--output", a.output], prog="python -m jobs.tune")
    return TuneOptions(
        request.opts, tuple(a.retain), a.sample, a.target, a.seed, target_on=a.target_on
    ).validate()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr
    )
    try:
        result = run_tune(parse_args(argv))
    except UsageError as e:
        print(f"jobs.tune: error: {e}", file=sys.stderr)
        return 2
    except (RunFailed, OSError) as e:
        print(f"jobs.tune: failed: {' '.join(str(e).split())[:300]}", file=sys.stderr)
        return 3
    print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
