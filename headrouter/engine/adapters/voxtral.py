"""Voxtral (`VoxtralForConditionalGeneration`): Whisper encoder on 30-s chunks + Llama decoder (1-D RoPE, no q/k bias).

The stock processor pads the waveform with zeros to a multiple of 30 s (`pad_to_multiple_of=480000`), extracts
128-bin Whisper log-mel features of the whole padded clip and stacks its 3000-frame chunks along the batch axis;
each chunk becomes 1500 encoder frames, 4 of which form one audio token: 375 tokens per started 30 s (12.5 per
second), the padding included. Prompt (mistral-common instruct format):
`<s>[INST][BEGIN_AUDIO][AUDIO]*N{prompt}[/INST]`. `[BEGIN_AUDIO]` opens the audio but nothing closes it, so the
adapter declares no markers: the prunable span is the run of `[AUDIO]` placeholders.
"""

from __future__ import annotations

import math

from headrouter.engine.adapters.contract import Adapter

__all__ = ["Voxtral", "audio_token_count"]

CHUNK_FRAMES = 3000  # 30 s of 10-ms mel frames: what the encoder takes per batch row
TOKENS_PER_CHUNK = 375  # 3000 frames -> 1500 encoder frames (stride 2) -> 375 tokens (4 frames per token)
TOKENS_PER_SECOND = 12.5

BOS, INST, INST_END, AUDIO, BEGIN_AUDIO = "<s>", "[INST]", "[/INST]", "[AUDIO]", "[BEGIN_AUDIO]"


def load(path, **kwargs):
    from transformers import VoxtralForConditionalGeneration

    return VoxtralForConditionalGeneration.from_pretrained(path, **kwargs)


def decoder(model):
    text = model.model.language_model
    return text.layers, text.norm


def text_config(model):
    return model.config.text_config


def token_ids(config) -> tuple[int, None, None]:
    return config.audio_token_id, None, None


def featurize(feature_extractor, audios, device="cpu"):
    """Whisper log-mel of checked clips, each zero-padded to whole 30-s chunks as the stock processor does, in one
    torch pass on `device` -> (features [B, 128, max C * 3000], valid frames ceil(n / 160) per clip). Never
    truncated."""
    from headrouter.engine.audio import log_mel, mel_frame_count

    pad = [math.ceil(mel_frame_count(int(a.shape[0])) / CHUNK_FRAMES) * CHUNK_FRAMES for a in audios]
    return log_mel(feature_extractor, audios, pad, device)


def audio_token_count(frames: int) -> int:
    """375 tokens per started 30-s chunk (the zero padding of the last chunk is encoded as audio too)."""
    return TOKENS_PER_CHUNK * math.ceil(frames / CHUNK_FRAMES)


def encode_prompt(tokenizer, prompt: str, num_audio_tokens: int, system: str | None, audio_id: int):
    """input_ids [1, T]: `<s>[INST][BEGIN_AUDIO][AUDIO]*N{prompt}[/INST]`, built from ids (mistral-common
    tokenizers do not parse control tokens out of text)."""
    import torch

    if num_audio_tokens < 1:
        raise ValueError(f"num_audio_tokens must be >= 1, got {num_audio_tokens}")
    if system:
        raise ValueError("Voxtral's audio turns take no system prompt")
    ids = tokenizer.convert_tokens_to_ids
    text = tokenizer.encode(prompt, add_special_tokens=False)
    seq = [
        tokenizer.bos_token_id,
        ids(INST),
        ids(BEGIN_AUDIO),
        *[audio_id] * num_audio_tokens,
        *text,
        ids(INST_END),
    ]
    return torch.tensor([seq], dtype=torch.long)


def model_inputs(input_ids, features, feature_mask) -> dict:
    """input_ids [B, T], features [B, 128, F] (F a multiple of 3000), feature_mask [B, F] ->
    {input_ids, attention_mask, input_features [sum of chunks, 128, 3000]} (each sample's own chunks, in order)."""
    import torch

    rows = []
    for feats, mask in zip(features, feature_mask):
        chunks = math.ceil(int(mask.sum()) / CHUNK_FRAMES)
        own = feats[:, : chunks * CHUNK_FRAMES]  # [128, C*3000]
        rows.append(own.reshape(own.shape[0], chunks, CHUNK_FRAMES).transpose(0, 1))  # [C, 128, 3000]
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "input_features": torch.cat(rows),
    }


class Voxtral(Adapter):
    FAMILY = "voxtral"
    MODEL_TYPES = ("voxtral",)
    ARCHITECTURES = ("VoxtralForConditionalGeneration",)
    # Model card (mistralai/Voxtral-Mini-3B-2507): 32k-token context, audio up to 30 minutes for transcription
    # (40 for understanding); 30 min = 60 chunks x 375 = 22,500 audio tokens.
    WINDOW_S = 1800.0
    TOTAL_FRAMES = None  # variable: a multiple of 3000 (see featurize)
    AUDIO_MARKERS = False
    END_OF_ANSWER = "</s>"  # mistral-common instruct: an answer ends with the end-of-sequence token
    load = staticmethod(load)
    decoder = staticmethod(decoder)
    text_config = staticmethod(text_config)
    token_ids = staticmethod(token_ids)
    model_inputs = staticmethod(model_inputs)
    featurize = staticmethod(featurize)
    audio_token_count = staticmethod(audio_token_count)
    encode_prompt = staticmethod(encode_prompt)
