"""Head-weight profiles (paper sec. 3.3.2) and Gaussian routing parameters (eq. 13), with versioned JSON files.

Format version 2 adds `settings` (the pruning settings the profiles were calibrated under: layer, probe input,
query tokens, pre-filter ratio; checked by `Profiles.check_settings`) and `router` (the learned router's
classifier, `headrouter.learned`). Version 1 files (neither) still load; their settings are unknown and unchecked.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .learned import LearnedRouter

__all__ = ["FORMAT", "SETTINGS", "VERSION", "ProfileError", "Profiles"]

log = logging.getLogger("headrouter")

FORMAT = "headrouter-profiles"
VERSION = 2
_READABLE = (1, 2)
# the PruneOptions fields a calibration depends on (retain is not one: profiles are used at every budget)
SETTINGS = ("layer", "probe_input", "query_tokens", "prefilter")

# Placeholder routing parameters for a model without calibration. With both profiles uniform every alpha gives
# the same w* (uniform heads), so these values only shape the reported alpha, never the kept tokens.
_PLACEHOLDER_CENTERS = (0.05, 0.1, 0.2)
_PLACEHOLDER_BANDWIDTH = 0.05


class ProfileError(ValueError):
    """A profile file or object is unusable (wrong head count, bad weights, malformed file, wrong version)."""


def _weights(name: str, values: Any) -> tuple[float, ...]:
    if isinstance(values, str | bytes) or not hasattr(values, "__iter__"):
        raise ProfileError(f"profiles: {name} must be a list of per-head floats, got {type(values).__name__}")
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError) as exc:
        raise ProfileError(f"profiles: {name} must contain only numbers ({exc})") from None
    if not out:
        raise ProfileError(f"profiles: {name} is empty; need one weight per attention head")
    if not all(math.isfinite(v) for v in out):
        raise ProfileError(f"profiles: {name} contains NaN or inf")
    if any(v < 0 for v in out):
        raise ProfileError(
            f"profiles: {name} has negative weights (min {min(out)}); head weights must be >= 0"
        )
    if sum(out) <= 0:
        raise ProfileError(
            f"profiles: {name} weights are all zero; at least one head needs a positive weight"
        )
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProfileError(f"profiles: {name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ProfileError(f"profiles: {name} must be finite, got {value}")
    return float(value)


@dataclass(frozen=True)
class Profiles:
    """Semantic and acoustic head-weight profiles, the three Gaussian centers and the bandwidth sigma_G.

    Weights are per query head (length H), non-negative, not all zero; they are normalized to sum 1 where they
    are mixed (eq. 14), so any positive scale is fine. centers = (mu_sem, mu_uni, mu_aco) on the selectivity
    spread axis (eq. 11); layer is the pruning layer M the profiles were calibrated for.
    settings: {layer, probe_input, query_tokens, prefilter} of the calibration, or None when unknown (version 1
    files, uniform profiles): then `check_settings` accepts any run. router: the learned router, or None.
    budget: the adaptive budget's calibration (`headrouter.budget`: rule, floor, ceiling, a retain grid and one
    threshold per grid point for each scoring method), or None.
    """

    semantic: tuple[float, ...]
    acoustic: tuple[float, ...]
    centers: tuple[float, float, float]
    bandwidth: float
    model_id: str = ""
    layer: int = 2
    calibration: dict = field(default_factory=dict, hash=False)
    settings: dict | None = field(default=None, hash=False)
    router: LearnedRouter | None = field(default=None, hash=False)
    budget: dict | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        sem = _weights("semantic", self.semantic)
        aco = _weights("acoustic", self.acoustic)
        if len(sem) != len(aco):
            raise ProfileError(f"profiles: semantic has {len(sem)} heads but acoustic has {len(aco)}")
        if isinstance(self.centers, str | bytes) or not hasattr(self.centers, "__iter__"):
            raise ProfileError("profiles: centers must be three numbers (mu_sem, mu_uni, mu_aco)")
        centers = tuple(self.centers)
        if len(centers) != 3:
            raise ProfileError(
                f"profiles: centers must be three numbers (mu_sem, mu_uni, mu_aco), got {len(centers)}"
            )
        centers = tuple(_number("centers", c) for c in centers)
        bandwidth = _number("bandwidth", self.bandwidth)
        if bandwidth <= 0:
            raise ProfileError(f"profiles: bandwidth must be > 0, got {bandwidth}")
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 1:
            raise ProfileError(
                f"profiles: layer must be an int >= 1 (pruning at layer 0 is unsupported), got {self.layer!r}"
            )
        if not isinstance(self.model_id, str):
            raise ProfileError(f"profiles: model_id must be a string, got {type(self.model_id).__name__}")
        if not isinstance(self.calibration, dict):
            raise ProfileError(
                f"profiles: calibration must be a JSON object, got {type(self.calibration).__name__}"
            )
        if self.settings is not None:
            if not isinstance(self.settings, dict) or sorted(self.settings) != sorted(SETTINGS):
                raise ProfileError(f"profiles: settings must be an object with exactly the keys {SETTINGS}")
            if self.settings["layer"] != self.layer:
                raise ProfileError(
                    f"profiles: settings layer {self.settings['layer']!r} disagrees with layer {self.layer}"
                )
            object.__setattr__(self, "settings", dict(self.settings))
        if self.router is not None:
            if not isinstance(self.router, LearnedRouter):
                raise ProfileError(
                    f"profiles: router must be a LearnedRouter, got {type(self.router).__name__}"
                )
            names = self.router.features
            expected = len(names) + (len(sem) - 1 if "selectivity" in names else 0)
            if self.router.num_features != expected:
                raise ProfileError(
                    f"profiles: the router expects {self.router.num_features} features, {names} give {expected}"
                )
        if self.budget is not None:
            if not isinstance(self.budget, dict) or not {"retains", "thresholds"} <= set(self.budget):
                raise ProfileError("profiles: budget must be an object with 'retains' and 'thresholds'")
            grid = self.budget["retains"]
            for key, taus in self.budget["thresholds"].items():
                if len(taus) != len(grid) or any(not 0.0 <= float(t) <= 1.0 for t in taus):
                    raise ProfileError(
                        f"profiles: budget thresholds of {key!r} must be {len(grid)} numbers in [0, 1]"
                    )
            object.__setattr__(self, "budget", dict(self.budget))
        object.__setattr__(self, "semantic", sem)
        object.__setattr__(self, "acoustic", aco)
        object.__setattr__(self, "centers", centers)
        object.__setattr__(self, "bandwidth", bandwidth)
        object.__setattr__(self, "calibration", dict(self.calibration))

    @property
    def num_heads(self) -> int:
        return len(self.semantic)

    def check_heads(self, num_heads: int) -> None:
        """Raise ProfileError unless these profiles have exactly num_heads weights."""
        if num_heads != self.num_heads:
            raise ProfileError(
                f"profiles: have {self.num_heads} head weights but the model has {num_heads} query heads"
                + (f" (profiles calibrated for {self.model_id!r})" if self.model_id else "")
            )

    def check_settings(
        self,
        *,
        layer: int,
        probe_input: str,
        query_tokens: str,
        prefilter: float | None,
        override: bool = False,
    ) -> None:
        """Raise ProfileError when a run's settings differ from the calibration's (override=True only warns).

        Profiles without recorded settings (version 1 files, `uniform`) pass for any settings.
        """
        if self.settings is None:
            return
        run = {
            "layer": layer,
            "probe_input": probe_input,
            "query_tokens": query_tokens,
            "prefilter": prefilter,
        }
        diff = [key for key in SETTINGS if not _same(self.settings[key], run[key])]
        if not diff:
            return
        have = ", ".join(f"{k}={self.settings[k]!r}" for k in diff)
        want = ", ".join(f"{k}={run[k]!r}" for k in diff)
        message = f"profiles: calibrated with {have} but this run uses {want}"
        if override:
            log.warning("%s (override_profile_settings: using them anyway)", message)
            return
        raise ProfileError(
            f"{message}; recalibrate (python -m jobs.calibrate) or set override_profile_settings=True"
        )

    @classmethod
    def uniform(cls, num_heads: int, model_id: str = "", layer: int = 2) -> Profiles:
        """Profiles for a model without calibration: both profiles uniform, so w* is uniform for any input.

        The centers (0.05, 0.1, 0.2) and bandwidth 0.05 are placeholders: they set the reported alpha only; the
        router is uninformative (routing="learned" gives alpha = (0, 1, 0)).
        """
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
            raise ProfileError(f"profiles: num_heads must be a positive int, got {num_heads!r}")
        return cls(
            semantic=(1.0,) * num_heads,
            acoustic=(1.0,) * num_heads,
            centers=_PLACEHOLDER_CENTERS,
            bandwidth=_PLACEHOLDER_BANDWIDTH,
            model_id=model_id,
            layer=layer,
            calibration={
                "method": "uniform",
                "note": "no calibration; centers, bandwidth and the (uninformative) router are placeholders",
            },
            router=LearnedRouter.uninformative(num_heads),
        )

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "model_id": self.model_id,
            "num_heads": self.num_heads,
            "layer": self.layer,
            "semantic": list(self.semantic),
            "acoustic": list(self.acoustic),
            "centers": list(self.centers),
            "bandwidth": self.bandwidth,
            "calibration": self.calibration,
            "settings": self.settings,
            "router": None if self.router is None else self.router.to_dict(),
            **({} if self.budget is None else {"budget": self.budget}),
        }

    @classmethod
    def from_dict(cls, data: Any, num_heads: int | None = None) -> Profiles:
        """Build from a parsed profiles file; ProfileError on a wrong format, version, field or head count."""
        if not isinstance(data, dict):
            raise ProfileError(f"profiles: expected a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise ProfileError(f"profiles: not a {FORMAT!r} file (format={data.get('format')!r})")
        if data.get("version") not in _READABLE:
            raise ProfileError(
                f"profiles: unsupported version {data.get('version')!r}; this code reads {_READABLE}"
            )
        router = data.get("router")
        if router is not None:
            try:
                router = LearnedRouter.from_dict(router)
            except ValueError as exc:
                raise ProfileError(f"profiles: {exc}") from None
        required = ("num_heads", "semantic", "acoustic", "centers", "bandwidth")
        missing = [key for key in required if key not in data]
        if missing:
            raise ProfileError(f"profiles: missing field(s) {', '.join(missing)}")
        profiles = cls(
            semantic=data["semantic"],
            acoustic=data["acoustic"],
            centers=data["centers"],
            bandwidth=data["bandwidth"],
            model_id=data.get("model_id", ""),
            layer=data.get("layer", 2),
            calibration=data.get("calibration", {}),
            settings=data.get("settings"),
            router=router,
            budget=data.get("budget"),
        )
        declared = data["num_heads"]
        if isinstance(declared, bool) or not isinstance(declared, int) or declared != profiles.num_heads:
            raise ProfileError(
                f"profiles: num_heads={declared!r} but the profiles have {profiles.num_heads} weights"
            )
        if num_heads is not None:
            profiles.check_heads(num_heads)
        return profiles

    def save(self, path: str | os.PathLike) -> None:
        """Write the versioned JSON file atomically (temp file + rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.to_dict(), f, indent=2)
                f.write("\n")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike, num_heads: int | None = None) -> Profiles:
        """Read a file written by save; num_heads, when given, must match. ProfileError on any problem."""
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ProfileError(f"profiles: cannot read {path}: {exc.strerror or exc}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ProfileError(
                f"profiles: {path} is not valid JSON ({exc.msg} at line {exc.lineno})"
            ) from None
        try:
            return cls.from_dict(data, num_heads=num_heads)
        except ProfileError as exc:
            raise ProfileError(f"{exc} [{path}]") from None
