"""One small adapter per model family: where the decoder sits, which ids mark audio, how inputs are fed."""

from __future__ import annotations

from headrouter.engine.adapters.contract import Adapter
from headrouter.engine.adapters.phi4_multimodal import Phi4Multimodal
from headrouter.engine.adapters.qwen2_5_omni import Qwen25Omni
from headrouter.engine.adapters.qwen2_audio import Qwen2Audio
from headrouter.engine.adapters.qwen3_omni import Qwen3Omni
from headrouter.engine.adapters.voxtral import Voxtral

__all__ = ["FAMILIES", "Adapter", "adapter_by_family", "adapter_for"]

FAMILIES: tuple[type[Adapter], ...] = (Qwen25Omni, Qwen2Audio, Phi4Multimodal, Voxtral, Qwen3Omni)


def adapter_by_family(family: str) -> type[Adapter]:
    """The adapter whose FAMILY is `family` (KeyError otherwise)."""
    return {a.FAMILY: a for a in FAMILIES}[family]


def adapter_for(config: dict) -> type[Adapter]:
    """The adapter for a config.json dict (by model_type, then architectures); ValueError otherwise."""
    model_type = config.get("model_type", "")
    archs = config.get("architectures") or []
    for family in FAMILIES:
        if model_type in family.MODEL_TYPES or any(a in family.ARCHITECTURES for a in archs):
            return family
    supported = sorted(t for f in FAMILIES for t in f.MODEL_TYPES)
    raise ValueError(
        f"unsupported model: model_type={model_type!r}, architectures={archs}; supported model types: {supported}"
    )
