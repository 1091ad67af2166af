"""Turn a benchmark's annotation files into a manifest for `python -m jobs.eval` / `jobs.run`.

    python -m jobs.import_benchmark audiomarathon --root DIR --out manifest.jsonl [--tasks SER ASR ...] [--strict]
    python -m jobs.import_benchmark mmau-pro --root DIR --out manifest.jsonl [--tasks speech sound ...] [--strict]

Writes one JSON object per line: {"audio": absolute path, "id", "task", "category", "question", "choices",
"answer", "prompt", "meta"} (layouts and category mapping: quality/readers/audiomarathon.py and mmau_pro.py).
A row that cannot be converted (missing audio file, answer not among the choices, ...) is skipped with a warning
naming the annotation file and row; --strict turns any such row into an error and writes nothing.
Exit status: 0 written, 2 usage error, unreadable root or annotations, no rows, or a skipped row under --strict.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from quality.importer import READERS, import_benchmark
from quality.readers import BenchmarkError

log = logging.getLogger("jobs")


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
