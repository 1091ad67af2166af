"""HeadRouter scoring and selection (paper sec. 3.3, eqs. 4-17) as pure tensor functions.

Notation: H query heads, Nt text (query) tokens, Na audio tokens, d head dim. All math runs in float32 whatever
the input dtype. The router sees one sample at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from numbers import Real

import torch

from .profiles import Profiles

__all__ = [
    "ROUTINGS",
    "SPREAD_ROUTINGS",
    "HeadRouter",
    "Selection",
    "frame_indices",
    "keep_count",
    "mix_head_weights",
    "oracle_alpha",
    "probe_distribution",
    "routing_alpha",
    "selectivity",
    "selectivity_spread",
    "token_importance",
    "topk_keep",
]

# soft: eq. 13. hard: one-hot at the nearest center (the paper's "Hard Threshold" ablation; thresholds are the
# midpoints between centers). none: alpha = (0, 1, 0), uniform heads (the "w/o Router" ablation).
SPREAD_ROUTINGS = ("soft", "hard", "none")
# oracle: one-hot at the sample's true category (evaluation only: the upper bound of any router over these two
# profiles). learned: a classifier on the per-head selectivities (headrouter.learned), fitted at calibration.
ROUTINGS = (*SPREAD_ROUTINGS, "oracle", "learned")
CATEGORIES = ("semantic", "acoustic")


def _exact(value: Real | Decimal, name: str) -> Fraction:
    # repr() of a float is its shortest decimal form, so 0.29 becomes exactly 29/100 (not 0.28999999999999998).
    if isinstance(value, bool) or not isinstance(value, Real | Decimal):
        raise ValueError(f"{name} must be a number, got {type(value).__name__}")
    if isinstance(value, Fraction | int):
        return Fraction(value)
    dec = value if isinstance(value, Decimal) else Decimal(repr(float(value)))
    if not dec.is_finite():
        raise ValueError(f"{name} must be finite, got {value}")
    return Fraction(dec)


def keep_count(n: int, retain: float) -> int:
    """Eq. 4: number of audio tokens kept, floor(n * retain), exact for decimal retain (0.29 of 100 -> 29)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    frac = _exact(retain, "retain")
    if not 0 <= frac <= 1:
        raise ValueError(f"retain must be in [0, 1], got {retain}")
    return math.floor(n * frac)


def topk_keep(importance: torch.Tensor, k: int) -> torch.Tensor:
    """Eq. 5: indices of the k largest scores, returned ascending; ties go to the lower index."""
    if importance.dim() != 1:
        raise ValueError(f"importance must be 1-D [N], got shape {tuple(importance.shape)}")
    n = importance.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= n:
        raise ValueError(f"k must be an int in [0, {n}], got {k!r}")
    scores = importance.detach().float()
    if torch.isnan(scores).any():
        raise ValueError("importance contains NaN")
    # a stable descending sort keeps equal scores in index order, so ties break toward the lower index
    order = torch.sort(scores, descending=True, stable=True).indices  # [N]
    return torch.sort(order[:k]).values.long()  # [k]


def frame_indices(n: int, k: int) -> torch.Tensor:
    """k evenly spaced indices int(i*n/k), i < k (AudioMarathon's Frame baseline); exact integer arithmetic."""
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= n:
        raise ValueError(f"k must be an int in [0, {n}], got {k!r}")
    return torch.arange(k, dtype=torch.long) * n // max(k, 1)  # [k], strictly increasing since n/k >= 1


def probe_distribution(q_text: torch.Tensor, k_audio: torch.Tensor) -> torch.Tensor:
    """Eqs. 15-17: p_h[k] = mean over text tokens of softmax_k(Q_h K_h^T / sqrt(d)); returns [H, Na] float32.

    q_text [H, Nt, d] and k_audio [H, Na, d] are the no-RoPE projections, one row per query head.
    """
    q = q_text.float()  # [H, Nt, d]
    k = k_audio.float()  # [H, Na, d]
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # [H, Nt, Na]  eq. 16
    return torch.softmax(scores, dim=-1).mean(dim=1)  # [H, Na]  eq. 17


def selectivity(probe: torch.Tensor) -> torch.Tensor:
    """Eq. 10: sel_h = 1 - H(p_h) / log Na (natural log), clamped to [0, 1]; [H, Na] -> [H].

    For Na = 1 the ratio is 0/0; we define sel_h = 1 (all mass on one token, like a one-hot row).
    """
    p = probe.float()  # [H, Na]
    na = p.shape[-1]
    if na <= 1:
        return torch.ones(p.shape[0], dtype=torch.float32)
    entropy = -torch.xlogy(p, p).sum(dim=-1)  # [H], 0 log 0 = 0
    return (1.0 - entropy / math.log(na)).clamp(0.0, 1.0)


def selectivity_spread(sel: torch.Tensor) -> float:
    """Eq. 11: population standard deviation (ddof 0) of the per-head selectivities."""
    return float(sel.float().std(correction=0))


def routing_alpha(
    spread: float, centers: tuple[float, float, float], bandwidth: float, routing: str = "soft"
) -> torch.Tensor:
    """Eq. 13: alpha = softmax_c(-(spr - mu_c)^2 / (2 sigma_G^2)) over (sem, uni, aco), in log space; [3] float32.

    The log-softmax keeps a spread far from every center finite (the plain ratio would be 0/0).
    routing="hard" gives a one-hot at the nearest center (ties: lower index); "none" gives (0, 1, 0).
    ("oracle" and "learned" need more than the spread: see `oracle_alpha` and `HeadRouter.select`.)
    """
    if routing not in SPREAD_ROUTINGS:
        raise ValueError(f"routing_alpha computes {SPREAD_ROUTINGS} routing, got {routing!r}")
    mu = torch.tensor(centers, dtype=torch.float64)  # [3]
    if routing == "none":
        return torch.tensor([0.0, 1.0, 0.0], dtype=torch.float32)
    if routing == "hard":
        nearest = int(torch.argmin((mu - spread).abs()))  # first minimum -> lower index on a tie
        alpha = torch.zeros(3, dtype=torch.float32)
        alpha[nearest] = 1.0
        return alpha
    z = (spread - mu) / bandwidth  # [3]
    logits = -0.5 * z * z  # [3]  log of the unnormalized Gaussian kernel
    if not torch.isfinite(logits.max()):
        # every kernel underflows even in log space (absurdly small bandwidth): take the sigma -> 0 limit
        return routing_alpha(spread, centers, bandwidth, "hard")
    return torch.exp(torch.log_softmax(logits, dim=0)).float()  # [3]


def oracle_alpha(category: str | None) -> torch.Tensor:
    """alpha for the sample's true category: (1, 0, 0) semantic, (0, 0, 1) acoustic; [3] float32."""
    if category not in CATEGORIES:
        raise ValueError(
            f"oracle routing needs the sample's category, one of {CATEGORIES}, got {category!r} "
            "(pass categories= to LALM.generate; the eval job passes the manifest's category)"
        )
    alpha = torch.zeros(3, dtype=torch.float32)
    alpha[0 if category == "semantic" else 2] = 1.0
    return alpha


def mix_head_weights(alpha: torch.Tensor, semantic: torch.Tensor, acoustic: torch.Tensor) -> torch.Tensor:
    """Eqs. 9, 14, 7: w* = a_sem w_sem + a_uni (1/H) + a_aco w_aco, each profile normalized to sum 1, then w*/sum."""
    sem = semantic.float() / semantic.float().sum()  # [H]
    aco = acoustic.float() / acoustic.float().sum()  # [H]
    uni = torch.full_like(sem, 1.0 / sem.shape[0])  # [H]  eq. 9
    a = alpha.float()
    w = a[0] * sem + a[1] * uni + a[2] * aco  # [H]  eq. 14
    return w / w.sum()  # [H]  eq. 7


def token_importance(head_weights: torch.Tensor, probe: torch.Tensor) -> torch.Tensor:
    """Eq. 8: importance[k] = sum_h w_h p_h[k]; [H], [H, Na] -> [Na]."""
    return head_weights.float() @ probe.float()  # [Na]


@dataclass(frozen=True)
class Selection:
    """What HeadRouter.select decided, with every intermediate quantity of the paper (all float32, CPU or input device).

    keep [k] ascending audio indices; probe [H, Na] eq. 17; selectivity [H] eq. 10; spread eq. 11;
    alpha [3] (sem, uni, aco) eq. 13; head_weights [H] w* eqs. 14 + 7; importance [Na] eq. 8 over all audio tokens.
    """

    keep: torch.Tensor
    probe: torch.Tensor
    selectivity: torch.Tensor
    spread: float
    alpha: torch.Tensor
    head_weights: torch.Tensor
    importance: torch.Tensor


class HeadRouter:
    """Per-sample head-weight routing and audio-token selection (Algorithm 1, steps 4-10).

    prefilter: None (default) scores every audio token (routing alone, the paper's "w/o Downsampling").
    A float f >= 1 enables the two-stage variant: first m = min(Na, ceil(f * k)) evenly spaced candidates
    int(i*Na/m), then the k candidates with the highest importance. f = 1 is exactly the Frame baseline.
    Routing statistics (probe, selectivity, spread, alpha) always use all audio tokens, so the route does not
    depend on the budget; only the final top-k is restricted to the candidates.
    routing: "soft" (eq. 13), "hard" (one-hot at the nearest center), "none" (uniform heads), "oracle" (the
    sample's true category profile; `select(..., category=)`), "learned" (the profiles' fitted classifier).
    """

    def __init__(self, profiles: Profiles, prefilter: float | None = None, routing: str = "soft"):
        if not isinstance(profiles, Profiles):
            raise TypeError(f"profiles must be a Profiles, got {type(profiles).__name__}")
        if routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
        if routing == "learned" and profiles.router is None:
            raise ValueError(
                "routing='learned' needs profiles with a fitted router (format version 2 written by "
                "python -m jobs.calibrate); these profiles have none"
                + (f" ({profiles.model_id})" if profiles.model_id else "")
            )
        if prefilter is not None:
            ratio = _exact(prefilter, "prefilter")
            if ratio < 1:
                raise ValueError(
                    f"prefilter must be None or >= 1 (candidates per kept token), got {prefilter}"
                )
        self.profiles = profiles
        self.prefilter = prefilter
        self.routing = routing
        self._semantic = torch.tensor(profiles.semantic, dtype=torch.float32)  # [H]
        self._acoustic = torch.tensor(profiles.acoustic, dtype=torch.float32)  # [H]

    def __repr__(self) -> str:
        return f"HeadRouter(heads={self.profiles.num_heads}, prefilter={self.prefilter}, routing={self.routing!r})"

    def candidates(self, num_audio: int, k: int) -> torch.Tensor:
        """Frame pre-filter candidates for keeping k of num_audio tokens ([m] ascending; all tokens if disabled)."""
        if self.prefilter is None:
            return torch.arange(num_audio, dtype=torch.long)
        m = min(num_audio, math.ceil(_exact(self.prefilter, "prefilter") * k))
        return frame_indices(num_audio, m)

    def select(
        self,
        q_text: torch.Tensor,
        k_audio: torch.Tensor,
        retain: float,
        *,
        category: str | None = None,
        budget=None,
    ) -> Selection:
        """Route and select audio tokens for one sample.

        q_text [H, Nt, d]: no-RoPE queries of the text tokens at layer M-1 (one row per query head).
        k_audio [H, Na, d]: no-RoPE keys of the audio tokens (KV heads repeated for GQA).
        retain: fraction of audio tokens kept, in [0, 1]; keeps floor(Na * retain).
        category: the sample's true category ("semantic" | "acoustic"); used by routing="oracle" only.
        budget: a `headrouter.budget.BudgetRule` (adaptive: the count comes from this sample's importance), or
        None (fixed: floor(Na * retain)).
        """
        if q_text.dim() != 3 or k_audio.dim() != 3:
            raise ValueError(
                f"expected q_text [H, Nt, d] and k_audio [H, Na, d], got {tuple(q_text.shape)} and {tuple(k_audio.shape)}"
            )
        heads, nt, d = q_text.shape
        if k_audio.shape[0] != heads or k_audio.shape[2] != d:
            raise ValueError(
                f"q_text {tuple(q_text.shape)} and k_audio {tuple(k_audio.shape)} disagree on H or d"
            )
        self.profiles.check_heads(heads)
        na = k_audio.shape[1]
        if nt == 0 or na == 0:
            raise ValueError(f"need at least one text and one audio token, got Nt={nt}, Na={na}")
        k = keep_count(na, retain)
        device = q_text.device

        probe = probe_distribution(q_text, k_audio)  # [H, Na]
        sel = selectivity(probe).to(device)  # [H]
        spread = selectivity_spread(sel)
        if self.routing == "oracle":
            alpha = oracle_alpha(category)
        elif self.routing == "learned":
            alpha = self.profiles.router.alpha(sel, spread, na)
        else:
            alpha = routing_alpha(spread, self.profiles.centers, self.profiles.bandwidth, self.routing)
        alpha = alpha.to(device)  # [3]
        weights = mix_head_weights(alpha, self._semantic.to(device), self._acoustic.to(device))  # [H]
        importance = token_importance(weights, probe)  # [Na]

        if budget is not None:
            k = budget.count(importance)
        cand = self.candidates(na, k).to(device)  # [m]
        keep = cand[topk_keep(importance[cand], k).to(device)]  # [k], ascending because cand is
        return Selection(keep, probe, sel, spread, alpha, weights, importance)
