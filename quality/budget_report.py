"""Fixed vs adaptive budgets at matched measured kept fractions, with paired bootstrap intervals.

For one split's per-sample results (`samples.csv.gz` of `jobs.eval --budget fixed adaptive --match-kept`), per
method and target retain: the measured share of audio tokens kept by each rule (sum kept / sum audio tokens),
the average % of vanilla of each, the paired difference adaptive - fixed (same resampled clips for both and for
vanilla, per-task stratified, as `quality.metrics.summarize`), each task's score difference with its own paired
interval, and the prefill FLOPs and KV bytes of adaptive relative to fixed, counted from what was really kept.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from quality.metrics import _average, _Task
from quality.scoring import normalize

__all__ = ["LayerShape", "compare_budgets", "format_budget_table"]


class LayerShape:
    """The decoder shape prefill FLOPs are counted with (from a model folder's config.json)."""

    def __init__(self, config: dict, layer: int = 2):
        text = config.get("thinker_config", config).get("text_config", config)
        self.d = int(text["hidden_size"])
        self.inter = int(text["intermediate_size"])
        self.layers = int(text["num_hidden_layers"])
        heads, kv = int(text["num_attention_heads"]), int(text["num_key_value_heads"])
        self.head_dim = int(text.get("head_dim") or self.d // heads)
        self.kv_dim = kv * self.head_dim
        self.m = layer
        self.kv_token_layer_bytes = 2 * self.kv_dim * 4  # float32 K and V of one token in one layer

    @classmethod
    def from_folder(cls, folder: str | Path, layer: int = 2) -> LayerShape:
        return cls(json.loads((Path(folder) / "config.json").read_text()), layer)

    def layer_flops(self, n: float) -> float:
        """Prefill FLOPs of one decoder layer over n tokens: projections and MLP 2*n*params, causal attention."""
        params = self.d * (2 * self.d + 2 * self.kv_dim) + 3 * self.d * self.inter
        return 2 * n * params + 2 * n * n * self.d  # QK^T and AV over the causal half, 2 FLOPs per MAC

    def prefill_flops(self, row: dict) -> float:
        """Layers < M over every token, layers >= M over the kept ones (the sequence length from KV bytes)."""
        t = row["kv_bytes_full"] / (self.layers * self.kv_token_layer_bytes)  # input tokens
        kept = t - row["audio_tokens"] + row["kept_tokens"]
        return self.m * self.layer_flops(t) + (self.layers - self.m) * self.layer_flops(kept)


def _by_config(samples: list[dict]) -> dict:
    configs: dict = defaultdict(lambda: defaultdict(dict))
    for r in samples:
        configs[(r["method"], r.get("budget") or "fixed", float(r["retain"]))][r["task"]][r["id"]] = r
    return configs


def compare_budgets(
    samples: list[dict], shape: LayerShape, resamples: int = 1000, seed: int = 0
) -> list[dict]:
    """One row per (method, retain) run under both budgets; see the module docstring."""
    configs = _by_config(samples)
    vanilla = next(v for k, v in configs.items() if k[0] == "vanilla")
    tasks = sorted(vanilla)
    ids = {t: sorted(vanilla[t]) for t in tasks}
    classes = {t: sorted({normalize(r["answer"]) for r in vanilla[t].values()}) for t in tasks}

    def arrays(cfg):
        return {t: _Task(t, [cfg[t][i] for i in ids[t]], classes[t]) for t in tasks}

    v = arrays(vanilla)
    v_full = {t: v[t].value() for t in tasks}
    out = []
    for method, budget, retain in sorted(configs):
        if budget != "adaptive" or (method, "fixed", retain) not in configs:
            continue
        fixed, adaptive = configs[(method, "fixed", retain)], configs[(method, "adaptive", retain)]
        xf, xa = arrays(fixed), arrays(adaptive)
        rng = np.random.default_rng(seed)
        diffs, task_diffs = [], defaultdict(list)
        for _ in range(resamples):
            pick = {t: rng.integers(0, len(ids[t]), size=len(ids[t])) for t in tasks}
            vs = {t: v[t].value(pick[t]) for t in tasks}
            fa = {t: xa[t].value(pick[t]) for t in tasks}
            ff = {t: xf[t].value(pick[t]) for t in tasks}
            d = _average(fa, vs) - _average(ff, vs)
            if np.isfinite(d):
                diffs.append(d)
            for t in tasks:
                task_diffs[t].append(fa[t] - ff[t])
        rows_f = [r for t in fixed.values() for r in t.values()]
        rows_a = [r for t in adaptive.values() for r in t.values()]

        def kept(rows):
            return sum(r["kept_tokens"] for r in rows) / sum(r["audio_tokens"] for r in rows)

        def per_task_kept(cfg):
            return {
                t: sum(r["kept_tokens"] for r in cfg[t].values())
                / sum(r["audio_tokens"] for r in cfg[t].values())
                for t in tasks
            }

        avg_a = _average({t: xa[t].value() for t in tasks}, v_full)
        avg_f = _average({t: xf[t].value() for t in tasks}, v_full)
        out.append(
            {
                "method": method,
                "retain": retain,
                "retain_set": float(np.mean([r.get("retain_set") or retain for r in rows_a])),
                "kept_fixed": kept(rows_f),
                "kept_adaptive": kept(rows_a),
                "avg_fixed": avg_f,
                "avg_adaptive": avg_a,
                "diff": avg_a - avg_f,
                "diff_low": float(np.percentile(diffs, 2.5)),
                "diff_high": float(np.percentile(diffs, 97.5)),
                "tasks": {
                    t: {
                        "fixed": xf[t].value(),
                        "adaptive": xa[t].value(),
                        "diff_low": float(np.percentile(task_diffs[t], 2.5)),
                        "diff_high": float(np.percentile(task_diffs[t], 97.5)),
                        "kept_fixed": per_task_kept(fixed)[t],
                        "kept_adaptive": per_task_kept(adaptive)[t],
                    }
                    for t in tasks
                },
                "flops_ratio": sum(shape.prefill_flops(r) for r in rows_a)
                / sum(shape.prefill_flops(r) for r in rows_f),
                "kv_ratio": sum(r["kv_bytes_kept"] for r in rows_a) / sum(r["kv_bytes_kept"] for r in rows_f),
            }
        )
    return out


def format_budget_table(rows: list[dict], split: str) -> str:
    """Markdown: the summary table, then per task score and kept share (fixed -> adaptive) with intervals."""
    lines = [
        f"### {split}",
        "",
        "| Method | Target | Kept fixed | Kept adaptive (retain set) | Fixed % vanilla | Adaptive % vanilla "
        "| Adaptive - fixed (95% CI) | FLOPs a/f | KV a/f |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['retain']:g} | {100 * r['kept_fixed']:.1f}% | {100 * r['kept_adaptive']:.1f}% "
            f"({r['retain_set']:.3f}) | {r['avg_fixed']:.1f} | {r['avg_adaptive']:.1f} | {r['diff']:+.1f} "
            f"({r['diff_low']:+.1f} to {r['diff_high']:+.1f}) | {r['flops_ratio']:.3f} | {r['kv_ratio']:.3f} |"
        )
    tasks = list(rows[0]["tasks"]) if rows else []
    lines += [
        "",
        "Per task: score fixed -> adaptive (paired 95% CI of the difference); audio kept fixed -> adaptive",
        "",
    ]
    lines.append("| Method | Target | " + " | ".join(tasks) + " |")
    lines.append("|---|---|" + "---|" * len(tasks))
    for r in rows:
        cells = [
            f"{x['fixed']:.1f} -> {x['adaptive']:.1f} ({x['diff_low']:+.1f} to {x['diff_high']:+.1f}); "
            f"kept {100 * x['kept_fixed']:.0f}% -> {100 * x['kept_adaptive']:.0f}%"
            for x in r["tasks"].values()
        ]
        lines.append(f"| {r['method']} | {r['retain']:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
