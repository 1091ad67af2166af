"""Pruning quality benchmark (`python -m jobs.eval`): methods x retain ratios on a manifest, as % of the unpruned
model; samples.csv.gz, table.csv/.md, pareto.png and routing.png (see jobs/eval.py). Metrics: quality/metrics.py.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from headrouter.engine.prompt import task_prompt
from quality.metrics import summarize
from quality.scoring import score

log = logging.getLogger("quality")

__all__ = ["EvalOptions", "read_samples", "run_eval", "write_reports"]

SAMPLE_FIELDS = ("id", "task", "category", "long", "method", "budget", "retain", "retain_set", "answer", "prediction", "score",
                 "audio_tokens", "kept_tokens", "prefill_s", "decode_s", "kv_bytes_full", "kv_bytes_kept",
                 "alpha_semantic", "alpha_uniform", "alpha_acoustic", "spread", "skipped_s")  # fmt: skip


@dataclass(frozen=True)
class EvalOptions:
    model: str
    manifest: str
    out: str
    methods: tuple[str, ...] = ("vanilla", "random", "frame", "fastv", "dart", "headrouter")
    retain: tuple[float, ...] = (0.7, 0.4, 0.1)
    per_task: int | None = None
    seed: int = 0
    layer: int = 2
    profiles: str | None = None
    resamples: int = 1000
    max_new_tokens: int = 16
    budgets: tuple[str, ...] = ("fixed",)
    match_kept: bool = False  # adaptive budgets keep as many of these clips' audio tokens as fixed ones


def _rows(opts: EvalOptions) -> list[dict]:
    import soundfile as sf

    manifest = Path(opts.manifest)
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    if opts.per_task:
        order = np.random.default_rng(opts.seed).permutation(len(rows))
        counts: dict[str, int] = {}
        picked = []
        for i in order:
            task = rows[int(i)].get("task", "")
            if counts.get(task, 0) < opts.per_task:
                counts[task] = counts.get(task, 0) + 1
                picked.append(int(i))
        rows = [rows[i] for i in sorted(picked)]
    for row in rows:
        path = Path(row["audio"])
        audio, sr = sf.read(path if path.is_absolute() else manifest.parent / path, dtype="float32")
        if sr != 16000 or audio.ndim != 1:
            raise ValueError(f"{path}: expected 16 kHz mono, got {sr} Hz, shape {audio.shape}")
        row["_audio"] = audio
        row["_prompt"] = row.get("prompt") or task_prompt("qa", row.get("question", ""), row.get("choices"))
    return rows


_MODELS: dict = {}
_SHARES: dict = {}  # (model, profiles, method, power, clip ids) -> each clip's importance shares


def method_options(method: str) -> tuple[str, str]:
    """A method name, optionally with a window-gating suffix ("headrouter+energy", "vanilla+vad") ->
    (pruning method, PruneOptions.skip_silence)."""
    base, _, gate = method.partition("+")
    return base, gate or "off"


def _matched_retain(opts: EvalOptions, lalm, rows: list[dict], method: str, retain: float) -> float:
    """The retain at which the adaptive budget keeps as many of these rows' audio tokens as the fixed budget at
    `retain` does (sum of floor(Na * retain)), from a scores-only prefill per row (no answers read): adaptive and
    fixed budgets are then compared at the same measured cost."""
    from headrouter.budget import retain_for_fraction
    from headrouter.budget_calibration import collect_shares
    from headrouter.routing import keep_count

    profiles = lalm.profiles(opts.profiles)
    power = float((profiles.budget or {}).get("power", 1.0))
    key = (opts.model, opts.profiles, method, power, tuple(r["id"] for r in rows))
    if key not in _SHARES:  # one scores-only pass per method, whatever the retain
        _SHARES[key] = collect_shares(lalm, rows, method, opts.profiles, power)
    shares = _SHARES[key]
    target = sum(keep_count(len(s), retain) for s in shares) / sum(len(s) for s in shares)
    matched = retain_for_fraction(shares, profiles, method, target)
    log.info("%s adaptive: retain %.4f keeps %.4f of these clips' audio tokens, as fixed %g", method, matched,
             target, retain)  # fmt: skip
    return matched


def run_config(
    opts: EvalOptions, rows: list[dict], method: str, retain: float, budget: str = "fixed"
) -> list[dict]:
    """Generate one (method, budget, retain) configuration over `rows`; the model is loaded once per process."""
    from headrouter import PruneOptions, load_lalm

    if opts.model not in _MODELS:
        _MODELS[opts.model] = load_lalm(opts.model)
    lalm = _MODELS[opts.model]
    base, gate = method_options(method)
    adaptive = PruneOptions(method=base, budget=budget).adaptive
    retain_set = _matched_retain(opts, lalm, rows, base, retain) if adaptive and opts.match_kept else retain
    options = PruneOptions(
        method=base,
        retain=retain_set,
        layer=opts.layer,
        profiles=opts.profiles,
        seed=opts.seed,
        skip_silence=gate,
        budget=budget,
    )
    started, results = time.monotonic(), []
    for row in rows:
        # the oracle router reads the sample's true category from the manifest (evaluation only)
        extra = {"categories": [row.get("category")]} if base == "headrouter-oracle" else {}
        out = lalm.generate([row["_audio"]], [row["_prompt"]], options, opts.max_new_tokens, **extra)[0]
        alpha = out.routing["alpha"] if out.routing else (None, None, None)
        results.append(
            {
                "id": row["id"], "task": row.get("task", ""), "category": row.get("category", ""),
                "long": bool(row.get("long", False)), "method": method, "budget": budget, "retain": retain,
                "retain_set": retain_set,
                "answer": row["answer"], "prediction": out.text.strip(), "score": score(row, out.text),
                "audio_tokens": out.audio_tokens, "kept_tokens": out.kept_tokens,
                "prefill_s": out.prefill_s, "decode_s": out.decode_s,
                "kv_bytes_full": out.kv_bytes_full, "kv_bytes_kept": out.kv_bytes_kept,
                "alpha_semantic": alpha[0], "alpha_uniform": alpha[1], "alpha_acoustic": alpha[2],
                "spread": out.routing["spread"] if out.routing else None, "skipped_s": out.skipped_s,
            }
        )  # fmt: skip
    mean = np.mean([r["score"] for r in results])
    log.info("%s@%g %s: mean score %.3f (%.0f s)", method, retain, budget, mean, time.monotonic() - started)
    return results


def run_eval(opts: EvalOptions, address: str | None = None) -> list[dict]:
    """Generate every (method, retain, sample) and return the per-sample result rows.

    With `address` (a Ray cluster: "auto" or host:port) each configuration runs as a Ray task (1 CPU,
    the model loaded once per worker process); otherwise configurations run one after another here.
    """
    rows = _rows(opts)
    unpruned = [m for m in opts.methods if method_options(m)[0] == "vanilla"]  # vanilla, vanilla+energy, ...
    from headrouter.options import PruneOptions

    configs = [(m, 1.0, "fixed") for m in unpruned]
    for b in opts.budgets:  # Random and Frame score no tokens: fixed only
        configs += [(m, r, b) for m in opts.methods if m not in unpruned for r in opts.retain
                    if b == "fixed" or PruneOptions(method=method_options(m)[0], budget=b).adaptive]  # fmt: skip
    if not address:
        return [
            r for method, retain, budget in configs for r in run_config(opts, rows, method, retain, budget)
        ]
    import ray

    ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    remote = ray.remote(num_cpus=1)(run_config)
    rows_ref = ray.put(rows)
    parts = ray.get([remote.remote(opts, rows_ref, m, r, b) for m, r, b in configs])
    return [r for part in parts for r in part]


def read_samples(path: str | Path) -> list[dict]:
    """Read samples.csv(.gz) back with its types (the input of `quality.metrics.summarize`)."""
    out = []
    with gzip.open(path, "rt", newline="") if str(path).endswith(".gz") else open(path, newline="") as f:
        for r in csv.DictReader(f):
            r["budget"] = r.get("budget") or "fixed"  # files written before budgets existed
            for key in ("retain", "retain_set", "score", "prefill_s", "decode_s", "alpha_semantic", "alpha_uniform",
                        "alpha_acoustic", "spread", "skipped_s"):  # fmt: skip
                r[key] = float(r[key]) if r.get(key) not in (None, "", "None") else None
            for key in ("audio_tokens", "kept_tokens", "kv_bytes_full", "kv_bytes_kept"):
                r[key] = int(r[key]) if r[key] not in ("", "None") else None
            r["long"] = r["long"] == "True"
            out.append(r)
    return out


def _task_order(samples: list[dict]) -> list[str]:
    cats = {r["task"]: r["category"] for r in samples}
    return sorted(cats, key=lambda t: (cats[t] != "semantic", t))


def write_reports(samples: list[dict], out: Path, resamples: int = 1000, seed: int = 0) -> list[dict]:
    """samples -> samples.csv.gz, table.csv, table.md, pareto.png, routing.png under `out`; returns the table."""
    out.mkdir(parents=True, exist_ok=True)
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=SAMPLE_FIELDS)
    w.writeheader()
    w.writerows({k: r.get(k) for k in SAMPLE_FIELDS} for r in samples)
    with open(out / "samples.csv.gz", "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as z:
        z.write(text.getvalue().encode())  # mtime 0: same results -> same bytes
    samples = read_samples(out / "samples.csv.gz")  # the table is computed from exactly what the file holds
    table = summarize(samples, resamples=resamples, seed=seed)
    tasks = _task_order(samples)
    cats = {r["task"]: r["category"] for r in samples}
    with open(out / "table.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "method",
                "budget",
                "retain",
                "n",
                *tasks,
                "avg_pct_vanilla",
                "ci_low",
                "ci_high",
                "prefill_ms",
                "kv_pct",
                "kept_pct",
            ]  # fmt: skip
        )
        for row in table:
            w.writerow([row["method"], row["budget"], row["retain"], row["n"], *(f"{row['tasks'][t]:.2f}" for t in tasks),
                        f"{row['avg_pct_vanilla']:.2f}", f"{row['ci_low']:.2f}", f"{row['ci_high']:.2f}",
                        f"{1000 * row['prefill_s']:.2f}", f"{100 * row['kv_fraction']:.1f}",
                        _pct(row["kept_fraction"], ".2f")])  # fmt: skip
    head = ["Method", "Budget", "Retain", *(f"{t} ({cats[t][:3]})" for t in tasks), "Avg. (% vanilla)", "95% CI",
            "Prefill ms", "KV kept", "Audio kept"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table:
        lines.append("| " + " | ".join([row["method"], row["budget"], f"{row['retain']:g}",
                     *(f"{row['tasks'][t]:.1f}" for t in tasks),
                     f"{row['avg_pct_vanilla']:.1f}%", f"{row['ci_low']:.1f}-{row['ci_high']:.1f}",
                     f"{1000 * row['prefill_s']:.1f}", f"{100 * row['kv_fraction']:.0f}%",
                     _pct(row["kept_fraction"], ".1f", "%")]) + " |")  # fmt: skip
    (out / "table.md").write_text("\n".join(lines) + "\n")
    _plots(table, samples, tasks, out)
    return table


def _pct(value: float | None, spec: str, unit: str = "") -> str:
    return "n/a" if value is None else f"{100 * value:{spec}}{unit}"


def _plots(table: list[dict], samples: list[dict], tasks: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for method in dict.fromkeys(r["method"] for r in table):
        rows = sorted((r for r in table if r["method"] == method), key=lambda r: r["retain"])
        y = [r["avg_pct_vanilla"] for r in rows]
        axes[0].plot([1000 * r["prefill_s"] for r in rows], y, "o-", label=method)
        axes[1].plot([100 * r["kv_fraction"] for r in rows], y, "o-", label=method)
    axes[0].set_xlabel("mean prefill time (ms)")
    axes[1].set_xlabel("KV cache kept after prefill (%)")
    for ax in axes:
        ax.set_ylabel("average score (% of vanilla)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "pareto.png", dpi=110)
    plt.close(fig)

    routed = [r for r in samples if r["method"] == "headrouter" and r["alpha_semantic"] is not None]
    if not routed:
        return
    fig, ax = plt.subplots(figsize=(7, 3.8))
    bottom = np.zeros(len(tasks))
    for key, label in (
        ("alpha_semantic", "semantic"),
        ("alpha_uniform", "uniform"),
        ("alpha_acoustic", "acoustic"),
    ):
        vals = np.array([np.mean([r[key] for r in routed if r["task"] == t] or [0.0]) for t in tasks])
        ax.bar(tasks, vals, bottom=bottom, label=label)
        bottom += vals
    ax.set_ylabel("mean routing coefficient")
    ax.set_title("HeadRouter routing per task (all retain ratios)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "routing.png", dpi=110)
    plt.close(fig)


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
