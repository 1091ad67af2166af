"""Turn a benchmark's annotation files into a manifest for jobs.eval / jobs.run.

    python -m jobs.import_benchmark audiomarathon --root DIR --out manifest.jsonl [--tasks SER ASR ...] [--strict]
    python -m jobs.import_benchmark mmau-pro --root DIR --out manifest.jsonl [--tasks speech sound ...] [--strict]

Writes one JSON object per line: {"audio": absolute path, "id", "task", "category", "question", "choices",
"answer", "prompt", "meta"} (layouts and category mapping: jobs/readers/audiomarathon.py and mmau_pro.py).
A row that cannot be converted (missing audio file, answer not among the choices, ...) is skipped with a warning
naming the annotation file and row; --strict turns any such row into an error and writes nothing.
Exit status: 0 written, 2 usage error, unreadable root or annotations, no rows, or a skipped row under --strict.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from jobs.readers import BenchmarkError, ImportResult, read_audiomarathon, read_mmau_pro

log = logging.getLogger("jobs")

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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("benchmark", choices=sorted(READERS))
    p.add_argument(
        "--root", type=Path, required=True, help="folder holding the benchmark's annotations and audio"
    )
    p.add_argument("--out", type=Path, required=True, help="manifest to write (.jsonl)")
    p.add_argument(
        "--tasks", nargs="+", help="tasks (AudioMarathon) or categories (MMAU-Pro); default: the paper's"
    )
    p.add_argument(
        "--strict", action="store_true", help="fail instead of skipping rows that cannot be converted"
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        result = import_benchmark(args.benchmark, args.root, args.out, args.tasks, args.strict)
    except BenchmarkError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    per_task = ", ".join(f"{t} {n}" for t, n in result.counts.items())
    log.info("wrote %s: %d rows (%s), %d skipped", args.out, len(result.rows), per_task, len(result.problems))
    return 0


if __name__ == "__main__":
    sys.exit(main())
