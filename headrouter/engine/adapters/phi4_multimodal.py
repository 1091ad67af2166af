"""Phi-4-multimodal (`Phi4MultimodalForCausalLM`): Conformer speech encoder (8x time reduction) + Phi-4-mini decoder.

Decoder: 1-D RoPE, partial rotary (the real checkpoint rotates 3/4 of each head, longrope), a fused `qkv_proj`
without bias, GQA. Audio placeholders: N x the audio token (`<|endoftext11|>`, id 200011 in the real checkpoint),
no begin/end markers, so the prunable span is the run of placeholders.

The speech path runs with the speech LoRA: the stock recipe is `model.load_adapter(path, adapter_name="speech",
adapter_kwargs={"subfolder": "speech-lora"}); model.set_adapter("speech")` (transformers' Phi-4-multimodal docs),
which needs PEFT. `load` instead merges `speech-lora/adapter_model.safetensors` into the base weights
(W + lora_alpha / r * B @ A for every adapted Linear), which computes the same function without the PEFT
dependency and leaves plain Linear modules for the hooks.
"""

from __future__ import annotations

import logging
import math

from headrouter.engine.adapters.contract import Adapter

__all__ = ["Phi4Multimodal", "merge_lora", "render_prompt"]

SPEECH_LORA = "speech-lora"
# 100 feature frames/s (hop 160 at 16 kHz) / audio_compression_rate 8 = 12.5 audio tokens per second
TOKENS_PER_SECOND = 12.5

SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"

log = logging.getLogger("headrouter")


def load(path, **kwargs):
    """Load the model and merge its speech LoRA (`speech-lora/`) when the folder has one."""
    from pathlib import Path

    from transformers import Phi4MultimodalForCausalLM

    model = Phi4MultimodalForCausalLM.from_pretrained(path, **kwargs)
    lora = Path(path) / SPEECH_LORA
    if (lora / "adapter_config.json").exists():
        merge_lora(model, lora)
    else:
        log.warning("%s has no %s/: running the speech path WITHOUT its LoRA weights", path, SPEECH_LORA)
    return model


def merge_lora(model, folder) -> int:
    """Merge a PEFT LoRA adapter folder (adapter_config.json, adapter_model.safetensors) into `model`'s
    Linear weights in place: W += scale * B @ A, scale = lora_alpha / r (/ sqrt(r) with use_rslora).
    Returns the number of merged modules; refuses adapter features a plain merge would not reproduce."""
    import json
    from pathlib import Path

    import torch
    from safetensors.torch import load_file

    folder = Path(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{folder}: peft_type {config.get('peft_type')!r}, expected LORA")
    for unsupported in ("use_dora", "rank_pattern", "alpha_pattern"):
        if config.get(unsupported):
            raise ValueError(f"{folder}: {unsupported} is not supported by the LoRA merge")
    if config.get("bias", "none") != "none":
        raise ValueError(f"{folder}: LoRA bias {config['bias']!r} is not supported by the merge")
    r, alpha = int(config["r"]), float(config["lora_alpha"])
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    modules = dict(model.named_modules())
    merged = 0
    for key, a in tensors.items():
        if not key.endswith(".lora_A.weight"):
            continue
        name = key[: -len(".lora_A.weight")].removeprefix("base_model.model.")
        b = tensors[key.replace(".lora_A.", ".lora_B.")]
        target = modules.get(name)
        if not isinstance(target, torch.nn.Linear):
            raise ValueError(f"{folder}: LoRA weight {key} has no Linear {name!r} in the model")
        with torch.no_grad():
            delta = (b.double() @ a.double()) * scale  # [out, r] @ [r, in] -> [out, in]
            target.weight.copy_(
                (target.weight.double() + delta.to(target.weight.device)).to(target.weight.dtype)
            )
        merged += 1
    if merged == 0:
        raise ValueError(f"{folder}: no lora_A weights found")
    log.info("merged %d speech LoRA modules from %s (scale %.3g)", merged, folder, scale)
    return merged


def decoder(model):
    text = model.model
    return text.layers, text.norm


def text_config(model):
    return model.config


def token_ids(config) -> tuple[int, None, None]:
    """(audio, None, None): Phi-4-multimodal has no audio begin/end markers."""
    return config.audio_config.audio_token_id, None, None


def featurize(feature_extractor, audios, device="cpu"):
    """The stock `Phi4MultimodalFeatureExtractor`'s features of checked clips (never truncated), computed on
    `device` by its own batched torch path, one call per clip length (its padded batch masks a shorter clip's
    frames unlike the clip alone) -> (features [B, 80, F] float32, zero-padded on the right; frames per clip,
    (n - 400) // 160 + 1). The stock layout is [F, 80]; `model_inputs` transposes back."""
    import numpy as np
    import torch

    fe = feature_extractor
    frames = [(int(a.shape[0]) - fe.win_length) // fe.hop_length + 1 for a in audios]
    out = torch.zeros(len(audios), fe.feature_size, max(frames), device=device)  # [B, 80, F]
    by_length: dict[int, list[int]] = {}
    for i, a in enumerate(audios):
        by_length.setdefault(int(a.shape[0]), []).append(i)
    for n, rows in by_length.items():
        wave = torch.from_numpy(np.stack([audios[i] for i in rows])).to(device)  # [b, n]
        # the stock __call__ leaves its padded waveform on the CPU whatever `device` says, hence its own path
        feats = fe._torch_extract_fbank_features(wave, torch.full((len(rows),), n), device)  # [b, F, 80]
        out[rows, :, : feats.shape[1]] = feats.to(torch.float32).transpose(1, 2)
    return out, frames


def audio_token_count(frames: int) -> int:
    """Audio tokens for `frames` feature frames: ceil(frames / 8) (`_compute_audio_embed_size`, rates 8 and 1)."""
    return math.ceil(frames / 8)


def render_prompt(prompt: str, num_audio_tokens: int, system: str | None, audio_token: str) -> str:
    """`[<|system|>..<|end|>]<|user|>{audio x N}{prompt}<|end|><|assistant|>` (the stock chat format, with the
    processor's expansion of the audio token to N placeholders)."""
    if num_audio_tokens < 1:
        raise ValueError(f"num_audio_tokens must be >= 1, got {num_audio_tokens}")
    head = f"{SYSTEM}{system}{END}" if system else ""
    return f"{head}{USER}{audio_token * num_audio_tokens}{prompt}{END}{ASSISTANT}"


def encode_prompt(tokenizer, prompt: str, num_audio_tokens: int, system: str | None, audio_id: int):
    """input_ids [1, T] of `render_prompt`, the audio token's text read from the tokenizer."""
    text = render_prompt(prompt, num_audio_tokens, system, tokenizer.convert_ids_to_tokens(audio_id))
    return tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]


def load_feature_extractor(location):
    from transformers import Phi4MultimodalFeatureExtractor

    return Phi4MultimodalFeatureExtractor.from_pretrained(location)


def model_inputs(input_ids, features, feature_mask) -> dict:
    """input_ids [B, T], features [B, 80, F], feature_mask [B, F] -> Phi4MultimodalForCausalLM kwargs."""
    import torch

    frames = feature_mask.sum(-1)  # [B]
    inputs = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "audio_input_features": features.transpose(1, 2),  # [B, F, 80]
        "audio_embed_sizes": (frames + 7) // 8,  # [B] ceil(frames / 8)
    }
    if features.shape[0] > 1:  # the stock extractor gives no mask for a single clip
        inputs["audio_attention_mask"] = feature_mask.bool()
    return inputs


class Phi4Multimodal(Adapter):
    FAMILY = "phi4_multimodal"
    MODEL_TYPES = ("phi4_multimodal",)
    ARCHITECTURES = ("Phi4MultimodalForCausalLM",)
    # Model card (microsoft/Phi-4-multimodal-instruct): speech summarization was trained on audio up to 30 minutes
    # (ASR/translation on clips up to 40 s); the encoder itself has no cap (it unfolds 40-s blocks).
    WINDOW_S = 1800.0
    DEFAULT_SYSTEM = None  # the stock chat template adds no system turn
    AUDIO_MARKERS = False
    END_OF_ANSWER = END  # the stock chat template closes every turn with <|end|>
    load = staticmethod(load)
    decoder = staticmethod(decoder)
    text_config = staticmethod(text_config)
    token_ids = staticmethod(token_ids)
    model_inputs = staticmethod(model_inputs)
    featurize = staticmethod(featurize)
    audio_token_count = staticmethod(audio_token_count)
    encode_prompt = staticmethod(encode_prompt)
    load_feature_extractor = staticmethod(load_feature_extractor)

    @staticmethod
    def frame_count(num_samples: int) -> int:
        """fbank frames of a clip: (n - 400) // 160 + 1 (25-ms windows every 10 ms, no centering)."""
        return (num_samples - 400) // 160 + 1

    @staticmethod
    def batch_group(num_samples: int) -> int:
        """Clips of one length only: the stock Conformer encoder does not mask feature padding everywhere (in a
        padded batch a shorter clip's logits moved by up to 1e-2, tiny-random, float32)."""
        return num_samples
