"""Qwen2.5-Omni thinker (`Qwen2_5OmniThinkerForConditionalGeneration`): audio tower + Qwen2 decoder with mRoPE."""

from __future__ import annotations

from headrouter.engine.adapters.contract import Adapter

__all__ = ["Qwen25Omni", "qwen_model_inputs"]


def qwen_model_inputs(input_ids, features, feature_mask) -> dict:
    """Forward/generate kwargs: input_ids [B, T], features [B, n_mels, L], feature_mask [B, L] (Qwen2-Audio's too)."""
    import torch

    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "input_features": features,
        "feature_attention_mask": feature_mask,
    }


class Qwen25Omni(Adapter):
    FAMILY = "qwen2_5_omni"
    MODEL_TYPES = ("qwen2_5_omni_thinker", "qwen2_5_omni")
    ARCHITECTURES = ("Qwen2_5OmniThinkerForConditionalGeneration", "Qwen2_5OmniForConditionalGeneration")
    WINDOW_S = 300.0  # the checkpoint's processor pads/truncates to 300 s (nb_max_frames 30000)
    TOTAL_FRAMES = None  # the encoder takes any length (2-s windows)
    DEFAULT_SYSTEM = (
        "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving auditory "
        "and visual inputs, as well as generating text and speech."
    )

    @staticmethod
    def load(path, **kwargs):
        """Load the thinker from a thinker folder, or the thinker part of a full Qwen2.5-Omni checkpoint."""
        import json
        from pathlib import Path

        from transformers import Qwen2_5OmniThinkerForConditionalGeneration

        config_file = Path(path) / "config.json"
        if config_file.exists() and json.loads(config_file.read_text()).get("model_type") == "qwen2_5_omni":
            # Full Omni checkpoint (thinker + talker + token2wav): take the thinker config and its weights only.
            from transformers import AutoConfig

            full = AutoConfig.from_pretrained(path, trust_remote_code=kwargs.get("trust_remote_code", False))
            kwargs["config"] = full.thinker_config
            kwargs["key_mapping"] = {r"^thinker\.": ""}
        return Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(path, **kwargs)

    @staticmethod
    def decoder(model):
        """(decoder layers, final norm) of the text model."""
        text = model.model.language_model
        return text.layers, text.norm

    @staticmethod
    def text_config(model):
        return model.config.get_text_config()

    @staticmethod
    def token_ids(config) -> tuple[int, int, int]:
        """(audio, audio_bos, audio_eos) ids from the thinker config."""
        return config.audio_token_id, config.audio_start_token_id, config.audio_end_token_id

    @staticmethod
    def gate_window_frames(model) -> int:
        """Mel frames per independent audio-encoder window (n_window * 2 = 200, 2 s): the unit of window gating."""
        return int(model.model.audio_tower.n_window) * 2

    model_inputs = staticmethod(qwen_model_inputs)
