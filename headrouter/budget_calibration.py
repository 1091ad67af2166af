"""Calibrate the adaptive budget (`headrouter.budget`) of a model: one threshold per scoring method and retain.

Run it with `python -m jobs.calibrate_budget`. Each calibration clip runs one prefill per scoring method (any
retain: the scores of layer M do not depend on it) and keeps its per-token scores (`PruneRecord.scores`); then,
per method and per retain of a grid, `calibrate_threshold` finds the share tau that keeps `retain` of the split's
audio tokens. The table goes into the profiles file (`Profiles.budget`) with its settings; the rest of the
profiles is left as it was.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .budget import BUDGET_RULE, calibrate_threshold, importance_shares, score_key
from .options import BUDGET_CEILING, BUDGET_FLOOR, PruneOptions

log = logging.getLogger("headrouter")

__all__ = ["BudgetCalibrateOptions", "SCORED_METHODS", "budget_table", "calibrate_budget", "collect_shares"]

# one method per calibration key (score_key): headrouter-noprefilter shares headrouter's, dart shares fastv's
SCORED_METHODS = (
    "headrouter",
    "headrouter-hard",
    "headrouter-norouter",
    "headrouter-oracle",
    "headrouter-learned",
    "fastv",
)
GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 ... 0.95


@dataclass(frozen=True)
class BudgetCalibrateOptions:
    model: str
    manifest: str
    out: str | None = None  # default: the model folder's headrouter_profiles.json
    profiles: str | None = None  # profiles to extend (default: the model's)
    methods: tuple[str, ...] = SCORED_METHODS
    samples: int = 600  # at most this many manifest rows (seeded draw)
    power: float = 1.0  # the rule's sharpening exponent (headrouter.budget.importance_shares)
    seed: int = 0
    threads: int = 1


def collect_shares(
    lalm, rows: list[dict], method: str, profiles: str | None = None, power: float = 1.0
) -> list[np.ndarray]:
    """Each row's `importance_shares` under `method` (one prefill per row, batch of one; DART's are FastV's)."""
    options = PruneOptions(method=score_key(method), retain=0.5, profiles=profiles)
    out = []
    for row in rows:
        category = row.get("category") if method == "headrouter-oracle" else None
        _, record = lalm.prefill_logits(row["_audio"], row["_prompt"], options, category=category)
        out.append(importance_shares(record.scores, power).numpy())  # [Na]
    return out


def budget_table(
    shares: dict[str, list[np.ndarray]], rows: list[dict], power: float = 1.0, grid=GRID
) -> dict:
    """The `Profiles.budget` table: thresholds per method key and retain, with the realized fractions."""
    thresholds, realized = {}, {}
    for method, per_row in shares.items():
        fits = [calibrate_threshold(per_row, r) for r in grid]
        thresholds[score_key(method)] = [round(t, 9) for t, _ in fits]
        realized[score_key(method)] = [round(f, 5) for _, f in fits]
    tasks: dict[str, int] = {}
    for row in rows:
        tasks[row.get("task", "")] = tasks.get(row.get("task", ""), 0) + 1
    return {
        "rule": BUDGET_RULE,
        "floor": BUDGET_FLOOR,
        "ceiling": BUDGET_CEILING,
        "power": power,
        "weighting": "tokens",
        "retains": list(grid),
        "thresholds": thresholds,
        "realized": realized,
        "samples": len(rows),
        "tasks": tasks,
    }


def _rows(manifest: Path, samples: int, seed: int) -> list[dict]:
    import soundfile as sf

    from headrouter.engine.prompt import task_prompt

    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    if samples < len(rows):
        pick = np.random.default_rng(seed).permutation(len(rows))[:samples]
        rows = [rows[int(i)] for i in sorted(pick)]
    for row in rows:
        path = Path(row["audio"])
        audio, sr = sf.read(path if path.is_absolute() else manifest.parent / path, dtype="float32")
        if sr != 16000 or audio.ndim != 1:
            raise ValueError(f"{path}: expected 16 kHz mono, got {sr} Hz, shape {audio.shape}")
        row["_audio"] = audio
        row["_prompt"] = row.get("prompt") or task_prompt("qa", row["question"], row.get("choices"))
    return rows


def calibrate_budget(opts: BudgetCalibrateOptions) -> dict:
    """Measure, fit and write the budget table; returns it."""
    import torch

    from headrouter.engine.lalm import PROFILES_FILE
    from headrouter.engine.loading import load_lalm

    torch.set_num_threads(opts.threads)
    lalm = load_lalm(opts.model)
    out = Path(opts.out) if opts.out else (lalm.folder / PROFILES_FILE if lalm.folder else None)
    if out is None:
        raise ValueError(f"{opts.model} is not a local folder: give --out")
    rows = _rows(Path(opts.manifest), opts.samples, opts.seed)
    shares = {}
    for method in opts.methods:
        started = time.monotonic()
        shares[method] = collect_shares(lalm, rows, method, opts.profiles, opts.power)
        log.info("budget: %s scores of %d clips (%.0f s)", method, len(rows), time.monotonic() - started)
    table = budget_table(shares, rows, opts.power)
    table.update(manifest=str(opts.manifest), seed=opts.seed)
    old = lalm.profiles(opts.profiles)
    same = ("rule", "floor", "ceiling", "power", "weighting", "retains", "manifest", "samples", "seed")
    if old.budget and all(
        old.budget.get(k) == table.get(k) for k in same
    ):  # add methods to the same calibration
        for key in ("thresholds", "realized"):
            table[key] = {**old.budget[key], **table[key]}
    profiles = replace(old, budget=table)
    profiles.save(out)
    for key, taus in table["thresholds"].items():
        log.info("budget: %s thresholds %s", key, " ".join(f"{r:g}:{t:.3f}" for r, t in zip(GRID, taus)))
    log.info("budget: wrote %s", out)
    return table
