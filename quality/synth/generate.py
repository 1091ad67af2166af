"""Generate a split of the synthetic benchmark (`python -m jobs.synth`): 16 kHz mono wav files plus a manifest.

Writes DIR/<split>/<split>-<seed>-<index>.wav and DIR/<split>.jsonl, one JSON object per line in the pipeline's
manifest format (see jobs/synth.py). Tasks, prompts and answer formats: quality/synth/tasks.py.
Same arguments -> bit-identical files.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import soundfile as sf

from quality.synth import sounds as snd
from quality.synth.tasks import format_prompt, make_sample

log = logging.getLogger("quality")


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
