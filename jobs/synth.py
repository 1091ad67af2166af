"""Generate a split of the synthetic benchmark: 16 kHz mono wav files plus a manifest.

    python -m jobs.synth --out DIR --split train|calib|test --seed S --n N [--long-fraction F]

Writes DIR/<split>/<split>-<seed>-<index>.wav and DIR/<split>.jsonl, one JSON object per line in the pipeline's
manifest format: {"audio": path relative to DIR, "id", "task", "category", "question", "choices", "answer"} plus
"prompt" (what the model sees after the audio), "long", "duration_s", "content_start_s", "content_end_s", "meta".
Tasks, prompts and answer formats: see jobs/synth_tasks.py. Same arguments -> bit-identical files.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import soundfile as sf

from jobs import synth_sounds as snd
from jobs.synth_tasks import SPLIT_CODE, format_prompt, make_sample

log = logging.getLogger("jobs")


def write_split(out: Path, split: str, seed: int, n: int, long_fraction: float = 0.0) -> Path:
    """Generate `n` samples of `split` into `out`; returns the manifest path."""
    (out / split).mkdir(parents=True, exist_ok=True)
    manifest = out / f"{split}.jsonl"
    started = time.monotonic()
    with open(manifest, "w") as f:
        for i in range(n):
            s = make_sample(split, seed, i, long_fraction)
            rel = f"{split}/{split}-{seed}-{i:06d}.wav"
            sf.write(out / rel, snd.to_pcm16(s.audio), snd.SR, subtype="PCM_16")
            row = {
                "audio": rel,
                "id": f"{split}-{seed}-{i:06d}",
                "task": s.task,
                "category": s.category,
                "question": s.question,
                "choices": list(s.choices) if s.choices else None,
                "answer": s.answer,
                "prompt": format_prompt(s.question, s.choices),
                "long": s.long,
                "duration_s": round(s.audio.size / snd.SR, 4),
                "content_start_s": round(s.content_start_s, 4),
                "content_end_s": round(s.content_end_s, 4),
                "meta": s.meta,
            }
            f.write(json.dumps(row) + "\n")
            if (i + 1) % 500 == 0:
                log.info("%s: %d/%d samples (%.0f s)", split, i + 1, n, time.monotonic() - started)
    return manifest


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
