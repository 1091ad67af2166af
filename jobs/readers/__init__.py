"""Readers that turn the paper's benchmarks (AudioMarathon, MMAU-Pro) into the pipeline's manifest format."""

from jobs.readers.audiomarathon import read_audiomarathon
from jobs.readers.common import BenchmarkError, ImportResult, resolve_answer
from jobs.readers.mmau_pro import read_mmau_pro

__all__ = ["BenchmarkError", "ImportResult", "read_audiomarathon", "read_mmau_pro", "resolve_answer"]
