"""Head-weight profiles (paper sec. 3.3.2) and Gaussian routing parameters (eq. 13), with versioned JSON files."""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["FORMAT", "VERSION", "ProfileError", "Profiles"]

FORMAT = "headrouter-profiles"
VERSION = 1

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
    """

    semantic: tuple[float, ...]
    acoustic: tuple[float, ...]
    centers: tuple[float, float, float]
    bandwidth: float
    model_id: str = ""
    layer: int = 2
    calibration: dict = field(default_factory=dict, hash=False)

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

    @classmethod
    def uniform(cls, num_heads: int, model_id: str = "", layer: int = 2) -> Profiles:
        """Profiles for a model without calibration: both profiles uniform, so w* is uniform for any input.

        The centers (0.05, 0.1, 0.2) and bandwidth 0.05 are placeholders: they set the reported alpha only.
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
                "note": "no calibration; centers and bandwidth are placeholders",
            },
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
        }

    @classmethod
    def from_dict(cls, data: Any, num_heads: int | None = None) -> Profiles:
        """Build from a parsed profiles file; ProfileError on a wrong format, version, field or head count."""
        if not isinstance(data, dict):
            raise ProfileError(f"profiles: expected a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise ProfileError(f"profiles: not a {FORMAT!r} file (format={data.get('format')!r})")
        if data.get("version") != VERSION:
            raise ProfileError(
                f"profiles: unsupported version {data.get('version')!r}; this code reads {VERSION}"
            )
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
