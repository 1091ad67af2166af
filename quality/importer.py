"""Turn a benchmark's annotation files into a manifest (`python -m jobs.import_benchmark`; readers: quality/readers/).

One JSON object per line: {"audio": absolute path, "id", "task", "category", "question", "choices", "answer",
"prompt", "meta"}. A row that cannot be converted is skipped with a warning, or under `strict` fails the import.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from quality.readers import BenchmarkError, ImportResult, read_audiomarathon, read_mmau_pro

log = logging.getLogger("quality")

READERS = {"audiomarathon": read_audiomarathon, "mmau-pro": read_mmau_pro}
_SHOWN_PROBLEMS = 20


def import_benchmark(
    benchmark: str, root: Path, out: Path, tasks: list[str] | None = None, strict: bool = False
) -> ImportResult:
    """Read `benchmark` under `root` and write its manifest to `out` (atomically); returns what was read."""
    result = READERS[benchmark](root, tasks)
    if result.problems:
        for p in result.problems[:_SHOWN_PROBLEMS]:
            log.warning("skipped %s", p)
        if len(result.problems) > _SHOWN_PROBLEMS:
            log.warning("... and %d more skipped rows", len(result.problems) - _SHOWN_PROBLEMS)
        if strict:
            raise BenchmarkError(
                f"{len(result.problems)} row(s) could not be converted (first: {result.problems[0]})"
            )
    if not result.rows:
        raise BenchmarkError(f"no usable {benchmark} rows under {root}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in result.rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, out)
    return result
