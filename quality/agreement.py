"""Agreement between a pruned answer and the unpruned one (shadow runs, `jobs.tune`), and its 95% interval.

ASR: 1 - WER of the pruned text against the unpruned text (jiwer), clipped to [0, 1]; two empty texts agree.
QA: 1 when the two answers are equal after the benchmark's normalization (quality.scoring.normalize), else 0.
"""

from __future__ import annotations

import numpy as np

from quality.scoring import normalize

__all__ = ["agreement", "mean_interval"]


def agreement(task: str, pruned: str | None, unpruned: str | None) -> float:
    """How far the pruned answer agrees with the unpruned one, in [0, 1] (see the module docstring)."""
    hyp, ref = normalize(pruned), normalize(unpruned)
    if task != "asr":
        return float(hyp == ref)
    if not ref:
        return float(not hyp)  # both empty agree; words out of nothing do not
    import jiwer

    return min(1.0, max(0.0, 1.0 - float(jiwer.wer(ref, hyp))))


def mean_interval(
    values, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float] | tuple[None, None, None]:
    """(mean, low, high): the mean and its percentile-bootstrap 95% interval; (None, None, None) when empty."""
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if x.size == 0:
        return None, None, None
    if x.size == 1:
        return float(x[0]), float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)  # [resamples]
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(x.mean()), float(lo), float(hi)
