"""Readers that turn the paper's benchmarks (AudioMarathon, MMAU-Pro) into the pipeline's manifest format."""

from quality.readers.audiomarathon import read_audiomarathon
from quality.readers.common import BenchmarkError, ImportResult, resolve_answer
from quality.readers.mmau_pro import read_mmau_pro

__all__ = ["BenchmarkError", "ImportResult", "read_audiomarathon", "read_mmau_pro", "resolve_answer"]
