"""routing="learned": a small logistic classifier on the probe's statistics turns a sample into alpha.

The paper's router (eq. 13) reads one scalar, the selectivity spread. `LearnedRouter` reads the whole per-head
selectivity vector (eq. 10), the spread and, when cross-validation says it helps, log(Na), and returns the
posterior P(category | features) over ("semantic", "acoustic"). It is fitted at calibration time
(`headrouter.calibration`) on the calibration split's samples; the LALM itself stays untouched (training-free).

Posterior -> alpha (sem, uni, aco): u = H(p) / log C (the posterior's normalized entropy, in [0, 1]),
alpha = ((1 - u) p_sem, u, (1 - u) p_aco). A confident classifier (u -> 0) mixes the two category profiles by
its posterior; one that cannot tell (p = (1/2, 1/2), u = 1) gives alpha = (0, 1, 0), the uniform head weights,
i.e. it falls back to the router-free method instead of betting on a category. In between the uniform profile
takes exactly the share of the decision the classifier is unsure about.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["CLASSES", "FEATURE_SETS", "LearnedRouter", "features", "fit_router", "posterior_alpha"]

CLASSES = ("semantic", "acoustic")
# candidate feature sets; calibration keeps the one with the lowest cross-validated log loss
FEATURE_SETS = (("selectivity", "spread"), ("selectivity", "spread", "log_audio_tokens"))
_LAMBDAS = (0.1, 1.0, 10.0, 100.0)  # L2 strengths tried (on standardized features, summed log loss)
_FOLDS = 5


def features(names: tuple[str, ...], selectivity, spread: float, num_audio: int) -> np.ndarray:
    """The feature vector [F] of one sample: the named groups in order (selectivity contributes H values)."""
    parts = []
    for name in names:
        if name == "selectivity":
            parts.append(np.asarray(torch.as_tensor(selectivity).float().cpu(), dtype=np.float64).ravel())
        elif name == "spread":
            parts.append(np.array([float(spread)]))
        elif name == "log_audio_tokens":
            parts.append(np.array([math.log(max(int(num_audio), 1))]))
        else:
            raise ValueError(f"unknown router feature {name!r}")
    return np.concatenate(parts)


def posterior_alpha(posterior: np.ndarray) -> torch.Tensor:
    """Class posterior over CLASSES [2] -> alpha (sem, uni, aco) [3] float32; see the module docstring."""
    p = np.clip(np.asarray(posterior, dtype=np.float64), 0.0, 1.0)
    p = p / p.sum()
    entropy = -sum(float(x) * math.log(x) for x in p if x > 0)
    u = min(max(entropy / math.log(len(p)), 0.0), 1.0)
    return torch.tensor([(1 - u) * p[0], u, (1 - u) * p[1]], dtype=torch.float32)


@dataclass(frozen=True)
class LearnedRouter:
    """Multinomial logistic regression over CLASSES on standardized features.

    logits = coef @ ((x - mean) / scale) + intercept, posterior = softmax(logits).
    info: how it was fitted (samples per class, lambda, cross-validated log loss and accuracy); not used to route.
    """

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[tuple[float, ...], ...]  # [C, F]
    intercept: tuple[float, ...]  # [C]
    classes: tuple[str, ...] = CLASSES
    info: dict = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self) -> None:
        if tuple(self.classes) != CLASSES:
            raise ValueError(f"router classes must be {CLASSES}, got {self.classes!r}")
        if not self.features or any(f not in FEATURE_SETS[-1] for f in self.features):
            raise ValueError(f"router features must be drawn from {FEATURE_SETS[-1]}, got {self.features!r}")
        mean = tuple(float(v) for v in self.mean)
        scale = tuple(float(v) for v in self.scale)
        coef = tuple(tuple(float(v) for v in row) for row in self.coef)
        intercept = tuple(float(v) for v in self.intercept)
        f = len(mean)
        if len(scale) != f or len(coef) != len(CLASSES) or any(len(r) != f for r in coef):
            raise ValueError(f"router shapes disagree: mean {f}, scale {len(scale)}, coef {len(coef)} rows")
        if len(intercept) != len(CLASSES):
            raise ValueError(f"router intercept needs {len(CLASSES)} values, got {len(intercept)}")
        values = (*mean, *scale, *intercept, *(v for r in coef for v in r))
        if not all(math.isfinite(v) for v in values) or min(scale) <= 0:
            raise ValueError("router parameters must be finite with positive scales")
        object.__setattr__(self, "features", tuple(self.features))
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "coef", coef)
        object.__setattr__(self, "intercept", intercept)
        object.__setattr__(self, "info", dict(self.info))

    @classmethod
    def uninformative(cls, num_heads: int) -> LearnedRouter:
        """A router that cannot tell the categories apart: posterior (1/2, 1/2), alpha (0, 1, 0) for any input."""
        f = num_heads + 1
        return cls(features=FEATURE_SETS[0], mean=(0.0,) * f, scale=(1.0,) * f, coef=((0.0,) * f,) * 2,
                   intercept=(0.0, 0.0), info={"note": "uninformative placeholder"})  # fmt: skip

    @property
    def num_features(self) -> int:
        return len(self.mean)

    def posterior(self, x: np.ndarray) -> np.ndarray:
        """Features [F] -> P(class) [C] (float64)."""
        x = np.asarray(x, dtype=np.float64)
        if x.shape != (self.num_features,):
            raise ValueError(f"router expects {self.num_features} features, got shape {x.shape}")
        z = (x - np.array(self.mean)) / np.array(self.scale)  # [F]
        logits = np.array(self.coef) @ z + np.array(self.intercept)  # [C]
        e = np.exp(logits - logits.max())
        return e / e.sum()

    def alpha(self, selectivity, spread: float, num_audio: int) -> torch.Tensor:
        """alpha (sem, uni, aco) [3] for one sample's selectivity [H], spread and audio token count."""
        return posterior_alpha(self.posterior(features(self.features, selectivity, spread, num_audio)))

    def to_dict(self) -> dict:
        return {
            "type": "logistic",
            "classes": list(self.classes),
            "features": list(self.features),
            "mean": list(self.mean),
            "scale": list(self.scale),
            "coef": [list(r) for r in self.coef],
            "intercept": list(self.intercept),
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, data: Any) -> LearnedRouter:
        if not isinstance(data, dict) or data.get("type") != "logistic":
            raise ValueError("router must be a JSON object with type 'logistic'")
        keys = ("classes", "features", "mean", "scale", "coef", "intercept")
        missing = [k for k in keys if k not in data]
        if missing:
            raise ValueError(f"router is missing field(s) {', '.join(missing)}")
        try:
            return cls(**{k: data[k] for k in keys}, info=data.get("info", {}))
        except TypeError as exc:
            raise ValueError(f"router fields malformed ({exc})") from None


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _newton(x: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    """Penalized multinomial logistic regression by Newton's method; x [n, F] standardized, y [n] -> W [C, F+1].

    Loss: sum of -log p(y_i) + lam/2 |coef|^2 + 1e-4/2 |intercept|^2 (the tiny intercept term makes the
    over-parametrized softmax strictly convex, so the optimum is unique). Deterministic: no random start.
    """
    n, f = x.shape
    c = len(CLASSES)
    xb = np.hstack([x, np.ones((n, 1))])  # [n, F+1]
    onehot = np.eye(c)[y]  # [n, C]
    reg = np.full(f + 1, lam)
    reg[-1] = 1e-4
    w = np.zeros((c, f + 1))
    for _ in range(100):
        p = _softmax(xb @ w.T)  # [n, C]
        grad = (p - onehot).T @ xb + w * reg  # [C, F+1]
        # Hessian of the summed log loss: sum_i (diag p_i - p_i p_i^T) kron x_i x_i^T
        a = np.einsum("ic,cd->icd", p, np.eye(c)) - np.einsum("ic,id->icd", p, p)  # [n, C, C]
        hess = np.einsum("icd,ij,ik->cjdk", a, xb, xb).reshape(c * (f + 1), c * (f + 1))
        hess += np.diag(np.tile(reg, c))
        step = np.linalg.solve(hess, grad.ravel()).reshape(c, f + 1)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return w


def _standardize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    return mean, np.where(scale > 1e-12, scale, 1.0)


def _cv(x: np.ndarray, y: np.ndarray, lam: float) -> tuple[float, float]:
    """Mean held-out log loss and accuracy over _FOLDS stratified folds (fold = rank within class mod _FOLDS)."""
    fold = np.zeros(len(y), dtype=int)
    for cls in np.unique(y):
        idx = np.flatnonzero(y == cls)
        fold[idx] = np.arange(idx.size) % _FOLDS
    losses, hits = [], []
    for k in range(_FOLDS):
        train, test = fold != k, fold == k
        if not test.any() or len(np.unique(y[train])) < len(CLASSES):
            continue
        mean, scale = _standardize(x[train])
        w = _newton((x[train] - mean) / scale, y[train], lam)
        xt = np.hstack([(x[test] - mean) / scale, np.ones((int(test.sum()), 1))])
        p = _softmax(xt @ w.T)
        losses.extend(-np.log(np.clip(p[np.arange(len(p)), y[test]], 1e-12, 1.0)))
        hits.extend(p.argmax(axis=1) == y[test])
    return float(np.mean(losses)), float(np.mean(hits))


def fit_router(samples: list[dict]) -> LearnedRouter:
    """Fit the classifier on calibration samples {"category", "selectivity" [H], "spread", "num_audio"}.

    Classes are balanced by keeping the first min(count) samples of each category, so the prior is 1/2 and an
    uninformative fit gives alpha = (0, 1, 0). The feature set and the L2 strength are the pair with the lowest
    5-fold cross-validated log loss; the final fit uses every (balanced) sample. Deterministic for given input.
    """
    by_class = {c: [s for s in samples if s["category"] == c] for c in CLASSES}
    n = min(len(v) for v in by_class.values())
    if n < _FOLDS:
        raise ValueError(f"the learned router needs >= {_FOLDS} samples per category, got {n}")
    rows = [s for c in CLASSES for s in by_class[c][:n]]
    y = np.array([CLASSES.index(s["category"]) for s in rows])
    best = None
    for names in FEATURE_SETS:
        x = np.stack([features(names, s["selectivity"], s["spread"], s["num_audio"]) for s in rows])
        for lam in _LAMBDAS:
            loss, acc = _cv(x, y, lam)
            if best is None or loss < best[0] - 1e-9:
                best = (loss, acc, names, lam, x)
    loss, acc, names, lam, x = best
    mean, scale = _standardize(x)
    w = _newton((x - mean) / scale, y, lam)
    return LearnedRouter(
        features=names,
        mean=tuple(mean),
        scale=tuple(scale),
        coef=tuple(tuple(r) for r in w[:, :-1]),
        intercept=tuple(w[:, -1]),
        info={
            "samples_per_class": n,
            "lambda": lam,
            "cv_log_loss": loss,
            "cv_accuracy": acc,
            "prior_log_loss": math.log(len(CLASSES)),
        },
    )
