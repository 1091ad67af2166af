"""`make demo`: the main job over the shipped demo archive, then each answer next to the expected one.

    python -m jobs.demo [--output out/demo] [--method headrouter] [--retain 0.6]

Runs `python -m jobs.run --input examples/synth/demo.jsonl --task qa --model tiny-synth` (twelve clips in five
formats, two of them 60-75 s long), then prints question, expected answer and the model's answer per clip, the
score (quality.scoring) and where the Parquet output and the HTML report are. Rerunning resumes: nothing is redone.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "examples" / "synth" / "demo.jsonl"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default="out/demo")
    p.add_argument("--method", default="headrouter")
    p.add_argument("--retain", default="0.6")
    a = p.parse_args(argv)

    from jobs import report, run
    from pipeline import read_results
    from quality.scoring import score

    args = ["--input", str(MANIFEST), "--output", a.output, "--model", "tiny-synth", "--task", "qa"]
    rc = run.main([*args, "--method", a.method, "--retain", a.retain, "--workers", "1"])
    if rc not in (0, 1):
        return rc
    expected = {r["id"]: r for r in map(json.loads, MANIFEST.read_text().splitlines())}
    files = read_results(a.output).files.to_pylist()
    print(f"\n{'clip':<20} {'expected':<24} {'answer':<24} score")
    total = 0.0
    for f in sorted(files, key=lambda f: f["id"]):
        row = expected[Path(f["id"]).name]
        s = score(row, f["text"]) if f["status"] == "ok" else 0.0
        total += s
        answer = f["text"] if f["status"] == "ok" else f"[{f['error']}]"
        print(f"{row['id']:<20} {row['answer']:<24} {answer:<24} {s:.2f}")
    print(
        f"mean score {total / max(len(files), 1):.2f} over {len(files)} clips ({a.method}, retain {a.retain})"
    )
    report.main([a.output])
    print(f"results: {a.output}/files (one row per clip), {a.output}/chunks (one row per chunk)")
    return rc


if __name__ == "__main__":
    sys.exit(main())
