"""One small adapter per model family: where the decoder sits, which ids mark audio, how inputs are fed."""

from __future__ import annotations

from headrouter.engine.adapters import phi4_multimodal, qwen2_5_omni, qwen2_audio, qwen3_omni, voxtral

__all__ = ["FAMILIES", "adapter_for"]

FAMILIES = (qwen2_5_omni, qwen2_audio, phi4_multimodal, voxtral, qwen3_omni)


def adapter_for(config: dict):
    """The adapter module for a config.json dict (by model_type, then architectures); ValueError otherwise."""
    model_type = config.get("model_type", "")
    archs = config.get("architectures") or []
    for family in FAMILIES:
        if model_type in family.MODEL_TYPES or any(a in family.ARCHITECTURES for a in archs):
            return family
    supported = sorted(t for f in FAMILIES for t in f.MODEL_TYPES)
    raise ValueError(
        f"unsupported model: model_type={model_type!r}, architectures={archs}; supported model types: {supported}"
    )
