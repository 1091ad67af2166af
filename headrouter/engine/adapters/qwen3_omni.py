"""Qwen3-Omni thinker (`Qwen3OmniMoeThinkerForConditionalGeneration`): AuT audio encoder + Qwen3-MoE decoder.

Decoder: Qwen3 attention (per-head q_norm/k_norm, no q/k bias; `headrouter.attention.project_qk` applies the norms),
interleaved mRoPE, a sparse MoE MLP in every layer. The MoE routes each token on its own (softmax over the experts,
top-k, no capacity limit, no token dropping; the load-balancing loss exists only with `output_router_logits` in
training), so pruning tokens never changes the experts or outputs of the tokens kept.

Positions: the text model takes [4, B, T] position ids; row 0 goes to the decoder layers (mask/cache bookkeeping),
rows 1-3 to the rotary embedding. Audio-only input gets plain 1-D positions in every row (the 3-D branch of
`get_rope_index` runs only with images/video), so the hooks' gathers of `position_ids` (last dim) and of (cos, sin)
keep the kept tokens at their original positions.

Audio: 16 kHz, 128-bin Whisper log-mel at 100 frames/s. The encoder cuts the mel into 1-s chunks
(`n_window` 50 -> 100 frames), three stride-2 convolutions make 13 frames of each chunk, and attention runs within
windows of 8 chunks (`n_window_infer` 800 frames) of one clip. Tokens: `_get_feat_extract_output_lengths`
(13 per full second, the tail chunk by the same three halvings): about 13 audio tokens per second. Prompt (the
stock chat template): `<|im_start|>user\\n<|audio_start|><|audio_pad|>*N<|audio_end|>{prompt}<|im_end|>\\n
<|im_start|>assistant\\n`; audio id 151675, markers 151669/151670 in the real checkpoint (the config class's
defaults 151646/151647 are Qwen2.5-Omni's; ids are always read from the checkpoint's config and tokenizer).
"""

from __future__ import annotations

from headrouter.engine.adapters.contract import Adapter

__all__ = ["Qwen3Omni", "audio_token_count"]

N_WINDOW = 50  # half a chunk in mel frames, as the real config and the stock processor (n_window=50)
TOKENS_PER_SECOND = 13.0  # 13 tokens per 100-frame chunk
# the real tokenizer's names for the audio markers and placeholder (Adapter.AUDIO_TOKEN_NAMES)
AUDIO_START, AUDIO_PAD, AUDIO_END = "<|audio_start|>", "<|audio_pad|>", "<|audio_end|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"


def load(path, **kwargs):
    """Load the thinker from a thinker folder, or the thinker part of a full Qwen3-Omni checkpoint; the encoder's
    chunk size must be the one `audio_token_count` assumes."""
    import json
    from pathlib import Path

    from transformers import Qwen3OmniMoeThinkerForConditionalGeneration

    config_file = Path(path) / "config.json"
    if config_file.exists() and json.loads(config_file.read_text()).get("model_type") == "qwen3_omni_moe":
        # Full checkpoint (thinker + talker + code2wav): the thinker config and its weights only.
        from transformers import AutoConfig

        full = AutoConfig.from_pretrained(path, trust_remote_code=kwargs.get("trust_remote_code", False))
        kwargs["config"] = full.thinker_config
        kwargs["key_mapping"] = {r"^thinker\.": ""}
    model = Qwen3OmniMoeThinkerForConditionalGeneration.from_pretrained(path, **kwargs)
    n_window = int(model.config.audio_config.n_window)
    if n_window != N_WINDOW:
        raise ValueError(f"{path}: audio n_window {n_window}, the token count here assumes {N_WINDOW}")
    return model


def decoder(model):
    text = model.model.language_model
    return text.layers, text.norm


def text_config(model):
    return model.config.text_config


def token_ids(config) -> tuple[int, int, int | None]:
    """(audio, audio_start, audio_end) from the thinker config (audio_end: None when the config lacks it; the
    engine then reads `<|audio_end|>` from the tokenizer)."""
    return config.audio_token_id, config.audio_start_token_id, getattr(config, "audio_end_token_id", None)


def audio_token_count(frames: int) -> int:
    """Audio tokens for `frames` mel frames (the stock `_get_feat_extract_output_lengths`, n_window 50)."""
    chunk = 2 * N_WINDOW
    tail = frames % chunk
    after_conv = (tail - 1) // 2 + 1
    return ((after_conv - 1) // 2 + 1 - 1) // 2 + 1 + (frames // chunk) * 13


def render_prompt(prompt: str, num_audio_tokens: int, system: str | None) -> str:
    """`[<|im_start|>system\\n..<|im_end|>\\n]<|im_start|>user\\n<|audio_start|>{pad x N}<|audio_end|>{prompt}
    <|im_end|>\\n<|im_start|>assistant\\n` (the stock chat template after the processor's expansion)."""
    if num_audio_tokens < 1:
        raise ValueError(f"num_audio_tokens must be >= 1, got {num_audio_tokens}")
    head = f"{IM_START}system\n{system}{IM_END}\n" if system else ""
    audio = f"{AUDIO_START}{AUDIO_PAD * num_audio_tokens}{AUDIO_END}"
    return f"{head}{IM_START}user\n{audio}{prompt}{IM_END}\n{IM_START}assistant\n"


def encode_prompt(tokenizer, prompt: str, num_audio_tokens: int, system: str | None, audio_id: int):
    """input_ids [1, T] of `render_prompt`."""
    text = render_prompt(prompt, num_audio_tokens, system)
    return tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]


def batch_group(num_samples: int):
    """Which clips may share a padded batch (the engine's grouping). The encoder pads every 1-s chunk of the batch
    to the longest chunk before its convolutions, and a stride-2 convolution of an odd-length chunk reads one
    position past its end: zero padding alone, but conv(0) + bias of the padded layout in a batch. A clip of
    100 mel frames or more has a full chunk, so its tail chunk is padded to 100 frames alone too; only clips
    under 1 s change with the batch (moved by ~1e-5 in tiny-random with random conv biases). So: those by
    length, everything else together."""
    from headrouter.engine.audio import mel_frame_count

    frames = mel_frame_count(num_samples)
    return "full" if frames >= 2 * N_WINDOW else frames


def model_inputs(input_ids, features, feature_mask) -> dict:
    """input_ids [B, T], features [B, 128, F], feature_mask [B, F] -> forward/generate kwargs (the thinker drops
    the masked frames before chunking, so a clip's chunks are the ones it has alone)."""
    import torch

    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "input_features": features,
        "feature_attention_mask": feature_mask,
    }


class Qwen3Omni(Adapter):
    FAMILY = "qwen3_omni"
    MODEL_TYPES = ("qwen3_omni_moe_thinker", "qwen3_omni_moe")
    ARCHITECTURES = ("Qwen3OmniMoeThinkerForConditionalGeneration", "Qwen3OmniMoeForConditionalGeneration")
    # The model card states no audio length limit and the stock processor never truncates (truncation=False); its
    # serving examples run a 32,768-token context on one GPU. 30 min = 23,400 audio tokens leaves room for the
    # prompt and a long answer in that context.
    WINDOW_S = 1800.0
    TOTAL_FRAMES = None  # the encoder takes any length (1-s chunks)
    DEFAULT_SYSTEM = None  # the stock chat template adds no system turn
    AUDIO_TOKEN_NAMES = (AUDIO_START, AUDIO_PAD, AUDIO_END)
    END_OF_ANSWER = IM_END
    load = staticmethod(load)
    decoder = staticmethod(decoder)
    text_config = staticmethod(text_config)
    token_ids = staticmethod(token_ids)
    model_inputs = staticmethod(model_inputs)
    audio_token_count = staticmethod(audio_token_count)
    encode_prompt = staticmethod(encode_prompt)
    batch_group = staticmethod(batch_group)
