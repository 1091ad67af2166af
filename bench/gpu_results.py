"""Committed GPU results: the file `bench/gpu.sh` writes, and the newest one the cost model reads.

One run on one GPU is a folder `bench/results/gpu-<name>/` holding `results.json` (this schema) beside the run's
Markdown. Every time is a median over the run's rounds, random weights, bf16; a method key is "vanilla" or
"<method>-<retain>" ("headrouter-0.4", "fastv-0.4"); a batch key is the batch size as a string.

    {
      "schema": 1,
      "gpu": "NVIDIA H200",              # torch.cuda.get_device_name(0)
      "gpu_key": "h200",                 # its datasheet row in bench.cost.GPUS (the roofline efficiencies use)
      "date": "2026-12-04",              # YYYY-MM-DD (UTC) of the run; the newest date wins
      "torch": "2.11.0+cu130",
      "transformers": "5.24.0",
      "commit": "6b5468a",               # the checkout that ran, or "" when not recorded
      "shape": "qwen2.5-omni-3b",        # bench.cost.SHAPES key: the text model and its audio encoder
      "layer": 2,                        # pruning layer M
      "chunk_s": 300,                    # seconds per chunk
      "audio_tokens": 7500,              # audio tokens per chunk
      "input_tokens": 7511,              # prompt tokens per chunk (audio + text)
      "new_tokens": 128,                 # tokens generated per chunk in the decode and end-to-end rows
      "peaks": {"bf16_tflops": 790, "copy_tb_s": 4.3},                 # measured on the machine (optional)
      "encoder_ms_per_chunk": {"stock": 211, "engine": 211},           # audio encoder, one 300-s chunk: the stock
                                                                       # per-window path and the one LALM runs
      "llm_prefill_s": {"vanilla": 0.111, "headrouter-0.4": 0.058},    # LLM part of one chunk's prefill (optional)
      "prefill_s": {"vanilla": {"1": 0.42, "64": 24.2}, ...},          # one call's whole prefill, per batch
      "decode_ms_per_step": {"vanilla": {"1": 113, "64": 101}, "headrouter-0.4": {...}, ...},
      "audio_s_per_s": {"vanilla": {"1": 20, "64": 518}, ...},         # end to end, new_tokens per chunk
      "peak_gib": {"vanilla": {"1": 8.6, "64": 63.6}, ...}            # optional
    }

`load_latest()` returns the newest valid file (by "date", then folder name) or None; a malformed file raises
ValueError naming it, so a bad commit cannot silently turn a measured estimate back into an assumed one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RESULTS_DIR", "GPUResults", "load", "load_latest"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REQUIRED = {
    "gpu": str,
    "gpu_key": str,
    "date": str,
    "torch": str,
    "shape": str,
    "layer": int,
    "chunk_s": (int, float),
    "audio_tokens": int,
    "input_tokens": int,
    "new_tokens": int,
    "encoder_ms_per_chunk": dict,
    "prefill_s": dict,
    "decode_ms_per_step": dict,
    "audio_s_per_s": dict,
}
PER_BATCH = ("prefill_s", "decode_ms_per_step", "audio_s_per_s")
METHOD = re.compile(r"^(vanilla|[a-z_]+-(0(\.\d+)?|1(\.0+)?))$")


@dataclass(frozen=True)
class GPUResults:
    """One committed results.json: `data` is the parsed file, `path` where it lives."""

    path: Path
    data: dict

    @property
    def gpu(self) -> str:
        return self.data["gpu"]

    @property
    def date(self) -> str:
        return self.data["date"]

    @property
    def source(self) -> str:
        """'NVIDIA H200, 2026-12-04, torch 2.11.0+cu130 (bench/results/gpu-h200-2026-12/results.json)'."""
        try:
            where = self.path.resolve().relative_to(RESULTS_DIR.parent.parent)
        except ValueError:
            where = self.path
        return f"{self.gpu}, {self.date}, torch {self.data['torch']} ({where})"

    def per_batch(self, key: str, method: str) -> dict[int, float]:
        """{batch: value} of a per-batch table ("decode_ms_per_step", ...) for `method` ({} when absent)."""
        return {int(b): float(v) for b, v in self.data[key].get(method, {}).items()}


def load(path: Path) -> GPUResults:
    """Parse and check one results.json; ValueError naming the file and the field otherwise."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable JSON file: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    for key, kind in REQUIRED.items():
        if not isinstance(data.get(key), kind):
            raise ValueError(f"{path}: field {key!r} missing or not {getattr(kind, '__name__', kind)}")
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", data["date"]):
        raise ValueError(f"{path}: date {data['date']!r} is not YYYY-MM-DD")
    for key in PER_BATCH:
        for method, rows in data[key].items():
            if not METHOD.match(method) or not isinstance(rows, dict):
                raise ValueError(
                    f"{path}: {key}[{method!r}]: expected a method key and a {{batch: value}} object"
                )
            for batch, value in rows.items():
                if not batch.isdigit() or not isinstance(value, int | float) or value <= 0:
                    raise ValueError(
                        f"{path}: {key}[{method!r}][{batch!r}]: expected a positive number by batch"
                    )
    if "vanilla" not in data["decode_ms_per_step"]:
        raise ValueError(f"{path}: decode_ms_per_step has no 'vanilla' row")
    return GPUResults(Path(path), data)


def load_latest(root: Path | None = None) -> GPUResults | None:
    """The newest `gpu-*/results.json` under `root` (default bench/results) by date, then folder name; None if
    there is none."""
    root = RESULTS_DIR if root is None else Path(root)
    found = [load(p) for p in sorted(root.glob("gpu-*/results.json"))]
    if not found:
        return None
    return max(found, key=lambda r: (r.date, r.path.parent.name))
