"""Per-sample token budgets (`PruneOptions.budget`) as pure tensor functions.

"fixed" keeps floor(Na * retain) audio tokens of every sample (eq. 4). "adaptive" lets a sample's own scores say
how many it needs: the fewest tokens whose share of the sample's normalized importance reaches a threshold tau
(like top-p sampling), clipped to [floor(Na * BUDGET_FLOOR * retain), floor(Na * min(1, BUDGET_CEILING * retain))].
Importance spread over many tokens (dense speech) asks for more tokens than importance on a few (one event in
room tone). tau is calibrated per scoring method and retain on a calibration split so that the kept fraction,
counted in tokens (sum of kept / sum of audio tokens, what prefill FLOPs and KV bytes follow), equals retain;
the table lives in the profiles (`Profiles.budget`, written by `python -m jobs.calibrate_budget`). A sample's
count depends on its own scores alone, never on its batch-mates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch

from .options import BUDGET_CEILING, BUDGET_FLOOR
from .routing import _exact

__all__ = [
    "BUDGET_RULE",
    "BudgetRule",
    "budget_bounds",
    "budget_rule",
    "calibrate_threshold",
    "importance_shares",
    "kept_fraction",
    "mass_keep_count",
    "retain_for_fraction",
    "score_key",
]

BUDGET_RULE = "mass"  # the rule the calibration table is for (the only one so far)


def score_key(method: str) -> str:
    """The calibration table's key for a method's scores: methods that score tokens alike share one threshold.

    headrouter-noprefilter ranks by the same importance as headrouter (the pre-filter only restricts the top-k);
    DART scores no tokens, so its count comes from FastV's attention of the same sample.
    """
    return {"headrouter-noprefilter": "headrouter", "dart": "fastv"}.get(method, method)


def budget_bounds(na: int, retain: float) -> tuple[int, int]:
    """(fewest, most) tokens an adaptive budget keeps of na at this retain, exact for decimal retain."""
    r = _exact(retain, "retain")
    low = math.floor(na * Fraction(BUDGET_FLOOR) * r)
    high = math.floor(na * min(Fraction(1), Fraction(BUDGET_CEILING) * r))
    return low, high


def importance_shares(importance: torch.Tensor, power: float = 1.0) -> torch.Tensor:
    """Cumulative share of the total importance**power held by the top 1, 2, ..., Na tokens: [Na] float64.

    importance [Na] >= 0 (negative scores count as 0). All zeros gives a linear ramp (every token alike).
    power > 1 sharpens: a flat background spread over many tokens (room tone around one event) then holds less
    of the total than the few tokens that stand out of it.
    """
    if importance.dim() != 1:
        raise ValueError(f"importance must be 1-D [Na], got shape {tuple(importance.shape)}")
    p = importance.detach().double().clamp_min(0.0).cpu()  # [Na]
    if torch.isnan(p).any():
        raise ValueError("importance contains NaN")
    if p.numel():
        p = (p / p.max().clamp_min(1e-300)) ** power  # [Na] in [0, 1]: no underflow below
    total = float(p.sum())
    if total <= 0.0:
        p, total = torch.ones_like(p), float(p.numel())
    ranked = torch.sort(p, descending=True, stable=True).values  # [Na]
    return ranked.cumsum(0) / total  # [Na], nondecreasing, last ~= 1


def mass_keep_count(
    importance: torch.Tensor, threshold: float, low: int, high: int, power: float = 1.0
) -> int:
    """Fewest tokens whose share of the sample's importance**power reaches `threshold`, clipped to [low, high]."""
    na = importance.shape[0]
    if not 0 <= low <= high <= na:
        raise ValueError(f"need 0 <= low <= high <= Na={na}, got low={low}, high={high}")
    if na == 0:
        return 0
    if threshold >= 1.0:
        k = na
    else:
        shares = importance_shares(importance, power)  # [Na]
        k = int((shares < threshold).sum()) + 1  # the share first reaches the threshold at token k
    return min(max(k, low), high)


@dataclass(frozen=True)
class BudgetRule:
    """An adaptive budget at one retain: threshold tau on the share of importance**power, `budget_bounds`."""

    threshold: float
    retain: float
    power: float = 1.0

    def count(self, importance: torch.Tensor) -> int:
        """Kept count for one sample from its importance [Na]."""
        low, high = budget_bounds(importance.shape[0], self.retain)
        return mass_keep_count(importance, self.threshold, low, high, self.power)


def calibrate_threshold(shares: list[np.ndarray], retain: float, iters: int = 60) -> tuple[float, float]:
    """(tau, kept fraction) with sum_i k_i(tau) / sum_i Na_i = retain as nearly as the steps allow.

    shares: each calibration sample's `importance_shares` as a numpy array. The fraction is nondecreasing in tau;
    bisection returns the smallest tau (to 2^-iters) whose fraction is >= retain, or the one just below it when
    that is closer.
    """
    if not shares:
        raise ValueError("no calibration samples")
    total = sum(len(s) for s in shares)
    bounds = [budget_bounds(len(s), retain) for s in shares]

    def fraction(tau: float) -> float:
        kept = 0
        for s, (low, high) in zip(shares, bounds):
            k = (
                len(s) if tau >= 1.0 else int(np.searchsorted(s, tau, side="left")) + 1
            )  # = (s < tau).sum() + 1
            kept += min(max(k, low), high)
        return kept / total

    lo, hi = 0.0, 1.0
    if fraction(hi) < retain:  # the ceilings bind: keep as many as they allow
        return hi, fraction(hi)
    for _ in range(iters):
        mid = (lo + hi) / 2
        if fraction(mid) >= retain:
            hi = mid
        else:
            lo = mid
    f_hi, f_lo = fraction(hi), fraction(lo)
    return (lo, f_lo) if abs(f_lo - retain) < abs(f_hi - retain) else (hi, f_hi)


def budget_rule(profiles, method: str, retain: float) -> BudgetRule:
    """The calibrated adaptive budget of `method` at `retain` from `profiles.budget` (linear between grid points).

    ValueError when the profiles hold no budget calibration for the method's scores.
    """
    table = getattr(profiles, "budget", None)
    key = score_key(method)
    if not table or key not in table.get("thresholds", {}):
        raise ValueError(
            f"budget 'adaptive' needs a budget calibration for {key!r} in the profiles "
            f"(python -m jobs.calibrate_budget); {'none' if not table else sorted(table['thresholds'])} found"
        )
    if (
        table.get("rule") != BUDGET_RULE
        or table.get("floor") != BUDGET_FLOOR
        or table.get("ceiling") != BUDGET_CEILING
    ):
        raise ValueError(
            f"the profiles' budget calibration is for rule {table.get('rule')!r}, floor {table.get('floor')}, "
            f"ceiling {table.get('ceiling')}; this code uses {BUDGET_RULE!r}, {BUDGET_FLOOR}, {BUDGET_CEILING}"
        )
    # [0, grid..., 1]: nothing is kept at retain 0 (ceiling 0) and everything at retain 1 (tau = 1)
    grid = [0.0, *table["retains"], 1.0]
    taus = [0.0, *table["thresholds"][key], 1.0]
    tau = float(np.interp(float(retain), grid, taus))
    return BudgetRule(threshold=tau, retain=retain, power=float(table.get("power", 1.0)))


def kept_fraction(shares: list[np.ndarray], rule: BudgetRule) -> float:
    """sum of kept / sum of audio tokens that `rule` gives samples with these `importance_shares` (its power)."""
    kept = 0
    for s in shares:
        low, high = budget_bounds(len(s), rule.retain)
        k = len(s) if rule.threshold >= 1.0 else int(np.searchsorted(s, rule.threshold, side="left")) + 1
        kept += min(max(k, low), high)
    return kept / max(sum(len(s) for s in shares), 1)


def retain_for_fraction(
    shares: list[np.ndarray], profiles, method: str, target: float, iters: int = 40
) -> float:
    """The retain at which the calibrated adaptive budget keeps `target` of these samples' tokens (bisection).

    What `jobs.eval --match-kept` runs adaptive budgets at, so they are compared with fixed ones at the same
    measured cost on the evaluated clips (a split unlike the calibration one keeps another share at equal retain).
    """
    lo, hi = 0.0, 1.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        if kept_fraction(shares, budget_rule(profiles, method, mid)) >= target:
            hi = mid
        else:
            lo = mid
    return round(hi, 6)
