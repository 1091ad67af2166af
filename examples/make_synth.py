"""Regenerate examples/synth/: the demo archive in tiny-synth's domain (python examples/make_synth.py).

Twelve clips of the synthetic task suite (quality/synth/tasks.py) from seed 11 of the test split, a seed no training,
calibration or evaluation run uses: two per task, two of them long (60-75 s with the content hidden inside
noise and silence), written in five formats at several sample rates and channel counts, plus a manifest
(demo.jsonl) with each clip's question, choices and expected answer.
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from quality.synth.tasks import make_sample  # noqa: E402

OUT = Path(__file__).resolve().parent / "synth"
SEED = 11
# (format, sample rate, channels): the pipeline resamples everything to 16 kHz mono
FORMATS = [("wav", 16000, 1), ("flac", 24000, 2), ("ogg", 22050, 1), ("mp3", 44100, 2), ("m4a", 24000, 1)]
LONG = {4, 9}  # indices of the long clips


def convert(wav: Path, dest: Path, rate: int, channels: int) -> None:
    codec = {"ogg": ["-c:a", "libvorbis", "-q:a", "2"], "mp3": ["-c:a", "libmp3lame", "-b:a", "64k"],
             "m4a": ["-c:a", "aac", "-b:a", "48k"]}.get(dest.suffix[1:], [])  # fmt: skip
    cmd = [
        "ffmpeg",
        "-nostdin",
        "-loglevel",
        "error",
        "-y",
        "-i",
        str(wav),
        "-ar",
        str(rate),
        "-ac",
        str(channels),
    ]
    subprocess.run([*cmd, *codec, "-fflags", "+bitexact", "-map_metadata", "-1", str(dest)], check=True)


def main() -> None:
    OUT.mkdir(exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(12):
            s = make_sample("test", SEED, i, long_fraction=1.0 if i in LONG else 0.0)
            fmt, rate, channels = FORMATS[i % len(FORMATS)]
            name = f"{i:02d}-{s.task}{'-long' if s.long else ''}.{fmt}"
            wav = Path(tmp) / "clip.wav"
            sf.write(wav, np.clip(s.audio, -1, 1), 16000, subtype="PCM_16")
            convert(wav, OUT / name, rate, channels)
            rows.append({"audio": name, "id": name, "task": s.task, "category": s.category,
                         "question": s.question, "choices": list(s.choices) if s.choices else None,
                         "answer": s.answer})  # fmt: skip
    with open(OUT / "demo.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
    main()
