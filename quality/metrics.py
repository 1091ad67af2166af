"""Benchmark metrics from per-sample results: task scores, % of vanilla, paired bootstrap intervals.

Per task (the paper's Table 1 conventions): transcription tasks score the mean word accuracy (1 - WER);
classification / multiple-choice tasks score macro F1 over the task's answer classes (a prediction outside the
classes counts as a miss for the true class and adds no class). Scores are reported x100.
A method's average is the mean over tasks of score / vanilla score x 100 ("% of vanilla"; tasks where vanilla
scores 0 are left out of the average). The confidence interval resamples samples with replacement, within each
task, with the same draw for the method and for vanilla (paired), `resamples` times, and reports the 2.5 and
97.5 percentiles of the average.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from quality.scoring import TRANSCRIPTION_TASKS, normalize

__all__ = ["macro_f1", "score_kept", "summarize", "task_score"]


def macro_f1(predictions: list[str], answers: list[str]) -> float:
    """Macro F1 over the classes present in `answers` (normalised strings)."""
    classes = sorted({normalize(a) for a in answers})
    index = {c: i for i, c in enumerate(classes)}
    gold = np.array([index[normalize(a)] for a in answers])
    pred = np.array([index.get(normalize(p), -1) for p in predictions])
    return _f1(pred, gold, len(classes))


def _f1(pred: np.ndarray, gold: np.ndarray, num_classes: int) -> float:
    """Macro F1 of class indices (pred -1: outside every class) over the classes present in `gold`."""
    if gold.size == 0:
        return 0.0
    tp = np.bincount(gold[pred == gold], minlength=num_classes)
    pred_count = np.bincount(pred[pred >= 0], minlength=num_classes)
    gold_count = np.bincount(gold, minlength=num_classes)
    present = gold_count > 0
    f1 = 2 * tp[present] / (pred_count[present] + gold_count[present])
    return float(f1.mean())


def task_score(task: str, rows: list[dict]) -> float:
    """Score x100 of one task from its rows (`prediction`, `answer`, `score`)."""
    if not rows:
        return float("nan")
    if task in TRANSCRIPTION_TASKS:
        return 100.0 * float(np.mean([r["score"] for r in rows]))
    return 100.0 * macro_f1([r["prediction"] for r in rows], [r["answer"] for r in rows])


class _Task:
    """One task's results of one configuration as arrays aligned on the vanilla sample order."""

    def __init__(self, task: str, rows: list[dict], classes: list[str]):
        self.transcription = task in TRANSCRIPTION_TASKS
        index = {c: i for i, c in enumerate(classes)}
        self.k = len(classes)
        self.score = np.array([r["score"] for r in rows], dtype=np.float64)
        self.gold = np.array([index[normalize(r["answer"])] for r in rows])
        self.pred = np.array([index.get(normalize(r["prediction"]), -1) for r in rows])

    def value(self, pick: np.ndarray | None = None) -> float:
        if pick is None:
            pick = np.arange(self.score.size)
        if self.transcription:
            return 100.0 * float(self.score[pick].mean())
        return 100.0 * _f1(self.pred[pick], self.gold[pick], self.k)


def score_kept(pruned, vanilla, resamples: int = 2000, seed: int = 0):
    """(share, low, high): sum(pruned) / sum(vanilla) of per-sample scores on the same samples, and its paired
    percentile-bootstrap 95% interval (one draw of samples for both); (None, None, None) when vanilla sums to 0."""
    p = np.stack(
        [np.asarray(pruned, dtype=np.float64), np.asarray(vanilla, dtype=np.float64)], axis=1
    )  # [n, 2]
    if p.size == 0 or p[:, 1].sum() <= 0:
        return None, None, None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(p), size=(resamples, len(p)))  # [resamples, n]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = p[idx, 0].sum(axis=1) / p[idx, 1].sum(axis=1)  # [resamples]
    lo, hi = np.percentile(ratios[np.isfinite(ratios)], [2.5, 97.5])
    return float(p[:, 0].sum() / p[:, 1].sum()), float(lo), float(hi)


def _average(scores: dict[str, float], vanilla: dict[str, float]) -> float:
    ratios = [scores[t] / vanilla[t] for t in vanilla if vanilla[t] > 0 and t in scores]
    return 100.0 * float(np.mean(ratios)) if ratios else float("nan")


def summarize(samples: list[dict], resamples: int = 1000, seed: int = 0) -> list[dict]:
    """One row per (method, budget, retain): per-task scores, average % of vanilla, its bootstrap CI, cost means.

    `samples` rows need id, task, method, retain, prediction, answer, score (and optionally prefill_s,
    kv_bytes_full, kv_bytes_kept, budget, audio_tokens, kept_tokens). Every configuration must hold the same
    sample ids as the vanilla one. kept_fraction: sum of kept / sum of audio tokens (what was really spent).
    """
    configs: dict = defaultdict(lambda: defaultdict(dict))
    for r in samples:
        configs[(r["method"], r.get("budget") or "fixed", float(r["retain"]))][r["task"]][r["id"]] = r
    vanilla_key = next((k for k in configs if k[0] == "vanilla"), None)
    if vanilla_key is None:
        raise ValueError("summarize needs the vanilla results")
    vanilla = configs[vanilla_key]
    tasks = sorted(vanilla)
    ids = {t: sorted(vanilla[t]) for t in tasks}
    classes = {t: sorted({normalize(r["answer"]) for r in vanilla[t].values()}) for t in tasks}
    v_tasks = {t: _Task(t, [vanilla[t][i] for i in ids[t]], classes[t]) for t in tasks}
    v_scores = {t: v.value() for t, v in v_tasks.items()}
    rng = np.random.default_rng(seed)
    draws = [{t: rng.integers(0, len(ids[t]), size=len(ids[t])) for t in tasks} for _ in range(resamples)]
    v_boot = [{t: v_tasks[t].value(d[t]) for t in tasks} for d in draws]
    table = []
    for (method, budget, retain), by_task in sorted(
        configs.items(), key=lambda kv: (kv[0][0] != "vanilla", kv[0])
    ):
        if {t: sorted(v) for t, v in by_task.items()} != ids:
            raise ValueError(f"{method}@{retain}: sample ids differ from the vanilla run's")
        arrays = {t: _Task(t, [by_task[t][i] for i in ids[t]], classes[t]) for t in tasks}
        scores = {t: a.value() for t, a in arrays.items()}
        boot = [_average({t: arrays[t].value(d[t]) for t in tasks}, vb) for d, vb in zip(draws, v_boot)]
        rows = [r for t in by_task.values() for r in t.values()]
        full = sum(r.get("kv_bytes_full") or 0 for r in rows)
        kept = sum(r.get("kv_bytes_kept") or 0 for r in rows)
        audio = sum(r.get("audio_tokens") or 0 for r in rows)
        kept_audio = sum(r.get("kept_tokens") or 0 for r in rows)
        boot = [b for b in boot if np.isfinite(b)]
        table.append(
            {
                "method": method,
                "budget": budget,
                "retain": retain,
                "n": len(rows),
                "tasks": scores,
                "avg_pct_vanilla": _average(scores, v_scores),
                "ci_low": float(np.percentile(boot, 2.5)) if boot else float("nan"),
                "ci_high": float(np.percentile(boot, 97.5)) if boot else float("nan"),
                "prefill_s": float(
                    np.nanmean([np.nan if r.get("prefill_s") is None else r["prefill_s"] for r in rows])
                ),
                "kv_fraction": kept / full if full else float("nan"),
                "kept_fraction": kept_audio / audio if audio else None,
            }
        )
    return table
