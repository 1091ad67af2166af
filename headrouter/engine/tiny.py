"""Tiny, randomly initialised LALMs built offline (real architectures, tiny configs) for tests and the demo.

Everything here is local: a word-level tokenizer built with the `tokenizers` library, a tiny config, and a
model folder written with `save_pretrained` (config.json, model.safetensors, tokenizer files,
preprocessor_config.json), which `load_lalm` then reads through the same `from_pretrained` path a real
checkpoint takes.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from headrouter.engine.prompt import ENDOFTEXT, IM_END, PAD, SPECIAL_TOKENS

__all__ = [
    "DEFAULT_WORDS",
    "EXTRA_SPECIAL_TOKENS",
    "UNK",
    "build_tiny_random",
    "build_word_tokenizer",
    "special_token_ids",
    "TINY_FAMILIES",
    "tiny_cache_dir",
    "tiny_path",
    "tiny_phi4mm_config",
    "tiny_qwen2_audio_config",
    "tiny_qwen3_omni_config",
    "tiny_thinker_config",
    "tiny_voxtral_config",
]

log = logging.getLogger("headrouter")

UNK = "<unk>"
# Ids 7..11: <unk>, then ids the Omni config needs for modalities the tiny models never see.
EXTRA_SPECIAL_TOKENS = (UNK, "<|IMAGE|>", "<|VIDEO|>", "<|vision_bos|>", "<|vision_eos|>")
# Words of the template itself; always in the vocabulary.
TEMPLATE_WORDS = ("system", "user", "assistant")

DEFAULT_WORDS = tuple(
    """
    the a an and or but of to in on at for with from by is are was were be been it this that these those
    i you he she we they me him her us them my your his its our their what which who when where why how
    yes no not all some any one two three four five six seven eight nine ten zero
    transcribe describe summarize answer question audio speech speaker music noise sound silence
    said says say talk talking meeting podcast today tomorrow yesterday time good bad new old first last
    please thanks hello okay so then there here now just very more less about into over under after before
    , . ? ! ' -
    """.split()
)

# Build recipe version: bump when the tiny configs or the tokenizer recipe change (new cache folder).
_RECIPE = "v3"


def build_word_tokenizer(
    words: list[str] | tuple[str, ...] = DEFAULT_WORDS,
    family_specials: tuple[str, ...] = (),
    eos_token: str = IM_END,
    bos_token: str | None = None,
):
    """Build a word-level `PreTrainedTokenizerFast` from a word list, entirely offline.

    Ids: the seven template specials of `headrouter.engine.prompt.SPECIAL_TOKENS` get 0..6 (`<pad>` = 0), then
    `EXTRA_SPECIAL_TOKENS` (`<unk>` = 7, ...), then `family_specials` (another family's chat/audio tokens),
    then "system", "user", "assistant", then `words` in order (duplicates dropped). Text is split on whitespace
    and punctuation; decoding joins words with spaces.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = [*SPECIAL_TOKENS, *EXTRA_SPECIAL_TOKENS, *family_specials]
    vocab: dict[str, int] = {}
    for token in (*specials, *TEMPLATE_WORDS, *words):
        if token and token not in vocab:
            vocab[token] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(specials)
    named = (UNK, PAD, eos_token, bos_token)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=UNK,
        pad_token=PAD,
        eos_token=eos_token,
        bos_token=bos_token,
        extra_special_tokens=[t for t in specials if t not in named],
        padding_side="left",
    )


def special_token_ids(tokenizer) -> dict[str, int]:
    """Config fields for the special tokens, read from `tokenizer` (the engine reads them back from config)."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (*SPECIAL_TOKENS, *EXTRA_SPECIAL_TOKENS)}
    return {
        "audio_token_index": ids["<|AUDIO|>"],
        "audio_start_token_id": ids["<|audio_bos|>"],
        "audio_end_token_id": ids["<|audio_eos|>"],
        "image_token_index": ids["<|IMAGE|>"],
        "video_token_index": ids["<|VIDEO|>"],
        "vision_start_token_id": ids["<|vision_bos|>"],
        "vision_end_token_id": ids["<|vision_eos|>"],
        "user_token_id": tokenizer.convert_tokens_to_ids("user"),
        "pad_token_id": ids[PAD],
        "eos_token_id": ids[IM_END],
        "endoftext_token_id": ids[ENDOFTEXT],
    }


def tiny_thinker_config(
    vocab_size: int,
    tokenizer,
    hidden_size: int = 32,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 64,
    audio_d_model: int = 32,
    audio_layers: int = 2,
    audio_heads: int = 4,
    **text_overrides,
):
    """A `Qwen2_5OmniThinkerConfig` of the real architecture at toy size, special ids taken from `tokenizer`.

    Defaults follow transformers' own tester: hidden 32, 4 layers, 4 heads, 2 KV heads (head_dim 8,
    mrope_section [1, 1, 2]); audio encoder d_model 32, 2 layers, 4 heads, n_window 100, 128 mel bins.
    `text_overrides` go to the text config (e.g. `max_position_embeddings`).
    """
    from transformers import Qwen2_5OmniThinkerConfig

    ids = special_token_ids(tokenizer)
    head_dim = hidden_size // num_heads
    if head_dim % 2 or head_dim < 4:
        raise ValueError(f"head_dim {head_dim} must be even and >= 4 for mRoPE")
    half = head_dim // 2
    mrope = [half // 4, half // 4, half - 2 * (half // 4)]
    text_config = {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "max_position_embeddings": 32768,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope},
        "pad_token_id": ids["pad_token_id"],
        "eos_token_id": ids["eos_token_id"],
        "tie_word_embeddings": False,
        **text_overrides,
    }
    audio_config = {
        "num_mel_bins": 128,
        "d_model": audio_d_model,
        "encoder_layers": audio_layers,
        "encoder_attention_heads": audio_heads,
        "encoder_ffn_dim": 2 * audio_d_model,
        "n_window": 100,
        "output_dim": hidden_size,
        "max_source_positions": 1500,
    }
    vision_config = {
        "depth": 1,
        "hidden_size": 16,
        "intermediate_size": 16,
        "num_heads": 2,
        "out_hidden_size": hidden_size,
        "fullatt_block_indexes": [0],
        "patch_size": 2,
        "temporal_patch_size": 2,
        "window_size": 8,
    }
    config = Qwen2_5OmniThinkerConfig(
        audio_config=audio_config,
        vision_config=vision_config,
        text_config=text_config,
        audio_token_index=ids["audio_token_index"],
        image_token_index=ids["image_token_index"],
        video_token_index=ids["video_token_index"],
        audio_start_token_id=ids["audio_start_token_id"],
        audio_end_token_id=ids["audio_end_token_id"],
        user_token_id=ids["user_token_id"],
    )
    # Read unconditionally by get_rope_index, but not a declared field of the thinker config.
    config.vision_start_token_id = ids["vision_start_token_id"]
    config.vision_end_token_id = ids["vision_end_token_id"]
    config.pad_token_id = ids["pad_token_id"]
    config.eos_token_id = ids["eos_token_id"]
    return config


def tiny_qwen2_audio_config(
    vocab_size: int,
    tokenizer,
    hidden_size: int = 32,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 64,
    audio_d_model: int = 32,
    audio_layers: int = 2,
    audio_heads: int = 4,
):
    """A `Qwen2AudioConfig` at toy size (Qwen2 text model with 1-D RoPE; encoder takes 3000 mel frames)."""
    from transformers import Qwen2AudioConfig

    ids = special_token_ids(tokenizer)
    config = Qwen2AudioConfig(
        audio_config={
            "model_type": "qwen2_audio_encoder",
            "num_mel_bins": 128,
            "d_model": audio_d_model,
            "encoder_layers": audio_layers,
            "encoder_attention_heads": audio_heads,
            "encoder_ffn_dim": 2 * audio_d_model,
            "max_source_positions": 1500,
        },
        text_config={
            "model_type": "qwen2",
            "vocab_size": vocab_size,
            "hidden_size": hidden_size,
            "intermediate_size": intermediate_size,
            "num_hidden_layers": num_layers,
            "num_attention_heads": num_heads,
            "num_key_value_heads": num_kv_heads,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6},
            "pad_token_id": ids["pad_token_id"],
            "eos_token_id": ids["eos_token_id"],
            "tie_word_embeddings": False,
        },
        audio_token_index=ids["audio_token_index"],
    )
    config.audio_start_token_id = ids["audio_start_token_id"]
    config.audio_end_token_id = ids["audio_end_token_id"]
    config.pad_token_id = ids["pad_token_id"]
    config.eos_token_id = ids["eos_token_id"]
    return config


# Chat and audio tokens of the other families (their tiny tokenizers add them after the shared specials).
PHI4MM_SPECIALS = ("<|endoftext11|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|endoftext10|>")
VOXTRAL_SPECIALS = ("<s>", "</s>", "[INST]", "[/INST]", "[AUDIO]", "[BEGIN_AUDIO]")


def tiny_phi4mm_config(vocab_size: int, tokenizer, hidden_size: int = 32, num_layers: int = 4):
    """A `Phi4MultimodalConfig` at toy size: 4 heads, 2 KV heads, head_dim 8 with partial rotary 0.75 (as the
    real checkpoint), Conformer speech encoder of 2 blocks (8x time reduction, 80 mel bins), one-layer vision."""
    from transformers import Phi4MultimodalConfig

    ids = tokenizer.convert_tokens_to_ids
    return Phi4MultimodalConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        original_max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.75},
        bos_token_id=ids(ENDOFTEXT),
        eos_token_id=[ids(ENDOFTEXT), ids("<|end|>")],
        pad_token_id=ids(PAD),
        tie_word_embeddings=False,
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 28,
            "crop_size": 28,
            "patch_size": 14,
            "image_token_id": ids("<|endoftext10|>"),
        },
        audio_config={
            "hidden_size": hidden_size,
            "intermediate_size": 2 * hidden_size,
            "num_blocks": 2,
            "num_attention_heads": 4,
            "ext_pw_out_channel": hidden_size,
            "depthwise_separable_out_channel": hidden_size,
            "nemo_conv_channels": hidden_size,
            "audio_token_id": ids("<|endoftext11|>"),
        },
    )


def tiny_voxtral_config(vocab_size: int, tokenizer, hidden_size: int = 32, num_layers: int = 4):
    """A `VoxtralConfig` at toy size: Whisper-style encoder (d_model 32, 2 layers, 1500 positions = one 30-s
    chunk), projector from 4 stacked frames, Llama decoder (4 heads, 2 KV heads, head_dim 8, no q/k bias)."""
    from transformers import VoxtralConfig

    ids = tokenizer.convert_tokens_to_ids
    return VoxtralConfig(
        audio_config={
            "hidden_size": 32,
            "intermediate_size": 4 * 32,  # the projector reads 4 consecutive encoder frames as one token
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_mel_bins": 128,
            "max_source_positions": 1500,
        },
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": hidden_size,
            "intermediate_size": 2 * hidden_size,
            "num_hidden_layers": num_layers,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": hidden_size // 4,
            "max_position_embeddings": 32768,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e8},
            "bos_token_id": ids("<s>"),
            "eos_token_id": ids("</s>"),
            "pad_token_id": ids(PAD),
            "tie_word_embeddings": False,
        },
        audio_token_id=ids("[AUDIO]"),
    )


QWEN3_OMNI_SPECIALS = (
    "<|audio_start|>",
    "<|audio_pad|>",
    "<|audio_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<|vision_start|>",
    "<|vision_end|>",
)


def tiny_qwen3_omni_config(vocab_size: int, tokenizer, hidden_size: int = 32, num_layers: int = 4):
    """A `Qwen3OmniMoeThinkerConfig` at toy size: Qwen3-MoE decoder (4 heads, 2 KV heads, head_dim 8, q/k norms,
    interleaved mRoPE [1, 1, 2], 4 experts with 2 per token in every layer, as the real checkpoint has MoE in every
    layer), AuT encoder (d_model 32, 2 layers, n_window 50 and n_window_infer 800 as the real one), one-block
    vision tower. Special ids are the real tokenizer's names in the tiny vocabulary."""
    from transformers import Qwen3OmniMoeThinkerConfig

    ids = tokenizer.convert_tokens_to_ids
    config = Qwen3OmniMoeThinkerConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": hidden_size,
            "intermediate_size": 2 * hidden_size,
            "moe_intermediate_size": hidden_size,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "num_hidden_layers": num_layers,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 32768,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1e6,
                "mrope_section": [1, 1, 2],
                "interleaved": True,
                "mrope_interleaved": True,
            },
            "pad_token_id": ids(PAD),
            "eos_token_id": ids(IM_END),
            "tie_word_embeddings": False,
        },
        audio_config={
            "num_mel_bins": 128,
            "d_model": 32,
            "encoder_layers": 2,
            "encoder_attention_heads": 4,
            "encoder_ffn_dim": 64,
            "n_window": 50,
            "n_window_infer": 800,
            "downsample_hidden_size": 8,
            "output_dim": hidden_size,
            "max_source_positions": 1500,
        },
        vision_config={
            "depth": 1,
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_heads": 2,
            "out_hidden_size": hidden_size,
            "patch_size": 2,
            "temporal_patch_size": 2,
            "deepstack_visual_indexes": [0],
        },
        audio_token_id=ids("<|audio_pad|>"),
        audio_start_token_id=ids("<|audio_start|>"),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        user_token_id=ids("user"),
        position_id_per_seconds=13,
    )
    # read by get_rope_index / the real checkpoint's config, not declared fields of the thinker config class
    config.audio_end_token_id = ids("<|audio_end|>")
    config.vision_start_token_id = ids("<|vision_start|>")
    config.vision_end_token_id = ids("<|vision_end|>")
    config.pad_token_id = ids(PAD)
    config.eos_token_id = ids(IM_END)
    return config


def _phi4mm_audio_init(model) -> None:
    """Make the tiny Conformer's output depend on the audio: PyTorch's default init for its convolutions and
    linears (transformers' std-0.02 init plus the random biases collapse every frame to the same vector) and
    fbank normalization statistics of the order real log-fbank features have (the checkpoint ships its own)."""
    import torch

    encoder = model.model.embed_tokens_extend.audio_embed.encoder
    with torch.no_grad():
        for module in encoder.modules():
            if isinstance(module, torch.nn.Conv1d | torch.nn.Conv2d | torch.nn.Linear):
                module.reset_parameters()
        encoder.encoder_embedding.global_mean.fill_(15.0)
        encoder.encoder_embedding.global_invstd.fill_(1 / 3)


def _phi4mm_speech_lora(model, folder: Path, rank: int = 4, alpha: float = 8.0) -> None:
    """A random PEFT-format speech LoRA for the tiny Phi-4-multimodal (qkv/o/gate_up/down of every layer)."""
    import json

    import torch
    from safetensors.torch import save_file

    targets = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
    tensors = {}
    for name, module in model.model.layers.named_modules():
        if name.rsplit(".", 1)[-1] in targets:
            key = f"base_model.model.model.layers.{name}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(rank, module.in_features) * 0.2
            tensors[f"{key}.lora_B.weight"] = torch.randn(module.out_features, rank) * 0.2
    folder.mkdir()
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": alpha,
        "target_modules": list(targets),
        "bias": "none",
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=1))


def tiny_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """`cache_dir`, else `$HEADROUTER_CACHE`, else `~/.cache/headrouter`."""
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("HEADROUTER_CACHE") or Path.home() / ".cache" / "headrouter")


# alias -> family; family -> (tokenizer: family specials, eos, bos), window of the saved feature extractor
TINY_FAMILIES = {
    "tiny-random": "qwen2_5_omni",
    "tiny-random-qwen2-audio": "qwen2_audio",
    "tiny-random-phi4mm": "phi4_multimodal",
    "tiny-random-voxtral": "voxtral",
    "tiny-random-qwen3-omni": "qwen3_omni",
}
_TOKENIZERS = {
    "qwen2_5_omni": ((), IM_END, None),
    "qwen2_audio": ((), IM_END, None),
    "phi4_multimodal": (PHI4MM_SPECIALS, "<|end|>", ENDOFTEXT),
    "voxtral": (VOXTRAL_SPECIALS, "</s>", "<s>"),
    "qwen3_omni": (QWEN3_OMNI_SPECIALS, IM_END, None),
}


def build_tiny_random(path: str | os.PathLike, family: str = "qwen2_5_omni", seed: int = 0) -> Path:
    """Write a tiny random model folder (config, safetensors, tokenizer, feature extractor) to `path`.

    `family`: "qwen2_5_omni" (`Qwen2_5OmniThinkerForConditionalGeneration`), "qwen2_audio"
    (`Qwen2AudioForConditionalGeneration`), "phi4_multimodal" (`Phi4MultimodalForCausalLM`, plus a random
    `speech-lora/` adapter), "voxtral" (`VoxtralForConditionalGeneration`) or "qwen3_omni"
    (`Qwen3OmniMoeThinkerForConditionalGeneration`). Weights come from
    `torch.manual_seed(seed)`, so a rebuild is identical. The folder is written next to `path` and renamed into
    place, so readers never see half of it.
    """
    import torch
    import transformers
    from transformers import GenerationConfig

    from headrouter.engine.audio import make_feature_extractor

    if family not in _TOKENIZERS:
        raise ValueError(f"unknown tiny family {family!r}: expected one of {sorted(_TOKENIZERS)}")
    path = Path(path)
    specials, eos, bos = _TOKENIZERS[family]
    tokenizer = build_word_tokenizer(DEFAULT_WORDS, family_specials=specials, eos_token=eos, bos_token=bos)
    vocab_size = len(tokenizer)
    config_fn, cls_name = {
        "qwen2_5_omni": (tiny_thinker_config, "Qwen2_5OmniThinkerForConditionalGeneration"),
        "qwen2_audio": (tiny_qwen2_audio_config, "Qwen2AudioForConditionalGeneration"),
        "phi4_multimodal": (tiny_phi4mm_config, "Phi4MultimodalForCausalLM"),
        "voxtral": (tiny_voxtral_config, "VoxtralForConditionalGeneration"),
        "qwen3_omni": (tiny_qwen3_omni_config, "Qwen3OmniMoeThinkerForConditionalGeneration"),
    }[family]
    config = config_fn(vocab_size, tokenizer)
    torch.manual_seed(seed)
    model = getattr(transformers, cls_name)(config).eval()
    with torch.no_grad():
        # transformers initialises biases to zero; random ones make a dropped bias (e.g. in the probe) visible.
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module.bias is not None:
                module.bias.normal_(0.0, 0.1)
    extra = {}
    if family == "qwen3_omni":
        # the AuT encoder's conv biases start at zero too; real ones are not (and make batch padding visible)
        with torch.no_grad():
            for module in model.model.audio_tower.modules():
                if isinstance(module, torch.nn.Conv2d):
                    module.bias.normal_(0.0, 0.1)
    if family == "phi4_multimodal":
        _phi4mm_audio_init(model)
        # the stock decode step re-embeds audio whenever the new token is the audio id (and then fails):
        # a real checkpoint never emits it, a random one may
        extra["suppress_tokens"] = [config.audio_config.audio_token_id]
    eos_ids = [tokenizer.convert_tokens_to_ids(eos), tokenizer.convert_tokens_to_ids(ENDOFTEXT)]
    model.generation_config = GenerationConfig(
        eos_token_id=eos_ids, pad_token_id=tokenizer.convert_tokens_to_ids(PAD), do_sample=False, **extra
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if family == "phi4_multimodal":
            from transformers import Phi4MultimodalFeatureExtractor

            Phi4MultimodalFeatureExtractor().save_pretrained(tmp)
            _phi4mm_speech_lora(model, tmp / "speech-lora")
        else:
            window = 300.0 if family in ("qwen2_5_omni", "qwen3_omni") else 30.0
            make_feature_extractor(window_s=window).save_pretrained(tmp)
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("built tiny random %s model in %s", family, path)
    return path


def tiny_path(alias: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder for a tiny alias (a key of `TINY_FAMILIES`), built on first use."""
    family = TINY_FAMILIES[alias]
    path = tiny_cache_dir(cache_dir) / f"{alias}-{_RECIPE}"
    if not (path / "config.json").exists():
        build_tiny_random(path, family=family)
    return path
