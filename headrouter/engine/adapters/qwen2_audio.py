"""Qwen2-Audio (`Qwen2AudioForConditionalGeneration`): Whisper encoder on fixed 30-s inputs + Qwen2 decoder (1-D RoPE)."""

from __future__ import annotations

# the same forward/generate keyword inputs as the Omni thinker
from headrouter.engine.adapters.qwen2_5_omni import model_inputs  # noqa: F401

FAMILY = "qwen2_audio"
MODEL_TYPES = ("qwen2_audio",)
ARCHITECTURES = ("Qwen2AudioForConditionalGeneration",)
WINDOW_S = 30.0
TOTAL_FRAMES = 3000  # the encoder insists on exactly 3000 mel frames; the mask marks the valid ones
DEFAULT_SYSTEM = "You are a helpful assistant."


def load(path, **kwargs):
    from transformers import Qwen2AudioForConditionalGeneration

    return Qwen2AudioForConditionalGeneration.from_pretrained(path, **kwargs)


def decoder(model):
    text = model.model.language_model
    return text.layers, text.norm


def text_config(model):
    return model.config.text_config


def token_ids(config) -> tuple[int, int, int]:
    """(audio, audio_bos, audio_eos); stock Qwen2-Audio configs carry only the audio id (markers: None, the
    engine then reads <|audio_bos|>/<|audio_eos|> from the tokenizer)."""
    return (
        config.audio_token_id,
        getattr(config, "audio_start_token_id", None),
        getattr(config, "audio_end_token_id", None),
    )
