"""The batch pipeline: sources -> decode and chunk -> inference actors -> Parquet, resumable and exactly-once."""

from pipeline.options import RunFailed, RunOptions, RunSummary, UsageError
from pipeline.resume import Results, read_results
from pipeline.runner import run_job

__all__ = ["Results", "RunFailed", "RunOptions", "RunSummary", "UsageError", "read_results", "run_job"]
