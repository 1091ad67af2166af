"""Generate a split of the synthetic benchmark: 16 kHz mono wav files plus a manifest.

    python -m jobs.synth --out DIR --split train|calib|test --seed S --n N [--long-fraction F]

Writes DIR/<split>/<split>-<seed>-<index>.wav and DIR/<split>.jsonl, one JSON object per line in the pipeline's
manifest format: {"audio": path relative to DIR, "id", "task", "category", "question", "choices", "answer"} plus
"prompt" (what the model sees after the audio), "long", "duration_s", "content_start_s", "content_end_s", "meta".
Tasks, prompts and answer formats: see quality/synth/tasks.py. Same arguments -> bit-identical files.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from quality.synth.generate import write_split
from quality.synth.tasks import SPLIT_CODE

log = logging.getLogger("jobs")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--split", choices=sorted(SPLIT_CODE), required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--long-fraction", type=float, default=0.1, help="share of long (60-75 s) clips")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    path = write_split(args.out, args.split, args.seed, args.n, args.long_fraction)
    log.info("wrote %s", path)


if __name__ == "__main__":
    main()
