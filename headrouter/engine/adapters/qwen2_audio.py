"""Qwen2-Audio (`Qwen2AudioForConditionalGeneration`): Whisper encoder on fixed 30-s inputs + Qwen2 decoder (1-D RoPE)."""

from __future__ import annotations

from headrouter.engine.adapters.contract import Adapter
from headrouter.engine.adapters.qwen2_5_omni import qwen_model_inputs

__all__ = ["Qwen2Audio"]


class Qwen2Audio(Adapter):
    FAMILY = "qwen2_audio"
    MODEL_TYPES = ("qwen2_audio",)
    ARCHITECTURES = ("Qwen2AudioForConditionalGeneration",)
    WINDOW_S = 30.0
    TOTAL_FRAMES = 3000  # the encoder insists on exactly 3000 mel frames; the mask marks the valid ones
    DEFAULT_SYSTEM = "You are a helpful assistant."

    @staticmethod
    def load(path, **kwargs):
        from transformers import Qwen2AudioForConditionalGeneration

        return Qwen2AudioForConditionalGeneration.from_pretrained(path, **kwargs)

    @staticmethod
    def decoder(model):
        text = model.model.language_model
        return text.layers, text.norm

    @staticmethod
    def text_config(model):
        return model.config.text_config

    @staticmethod
    def token_ids(config) -> tuple[int, int | None, int | None]:
        """(audio, audio_bos, audio_eos); stock Qwen2-Audio configs carry only the audio id (markers: None, the
        engine then reads <|audio_bos|>/<|audio_eos|> from the tokenizer)."""
        return (
            config.audio_token_id,
            getattr(config, "audio_start_token_id", None),
            getattr(config, "audio_end_token_id", None),
        )

    # the same forward/generate keyword inputs as the Omni thinker
    model_inputs = staticmethod(qwen_model_inputs)
