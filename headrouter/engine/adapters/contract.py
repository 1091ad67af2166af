"""The one contract between the engine and a model family: what every adapter defines, and its optional abilities
with their defaults, declared here instead of probed with getattr at each call site.

An adapter is a subclass of `Adapter` used as a namespace (never instantiated): class constants and static
methods. A subclass must set every constant marked required; the optional abilities below default to the stock
Qwen behaviour (Whisper features, 25 tokens per second, the Qwen chat template, <|audio_bos|>/<|audio_eos|>
markers, <|im_end|> closing an answer, padded batches exact, no window gating).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import ClassVar

from headrouter.engine.audio import log_mel, mel_frame_count, tokens_from_frames
from headrouter.engine.prompt import AUDIO, AUDIO_BOS, AUDIO_EOS, IM_END, render_prompt

__all__ = ["REQUIRED", "Adapter"]

REQUIRED = ("FAMILY", "MODEL_TYPES", "ARCHITECTURES", "WINDOW_S")


class Adapter:
    """A model family: where its decoder sits, which ids mark audio, how its inputs are fed."""

    # ---- required ---------------------------------------------------------------------------------------
    FAMILY: ClassVar[str]  # the family's name (the tiny alias table and the loaded LALM's `family`)
    MODEL_TYPES: ClassVar[tuple[str, ...]]  # config.json model_type values this adapter loads
    ARCHITECTURES: ClassVar[tuple[str, ...]]  # config.json architectures, when model_type is not enough
    WINDOW_S: ClassVar[float]  # longest clip (seconds) one call takes; the pipeline chunks to it

    @staticmethod
    def load(path, **kwargs):
        """The stock model from a checkpoint folder or hub id (kwargs: from_pretrained's)."""
        raise NotImplementedError

    @staticmethod
    def decoder(model):
        """(decoder layers, final norm) of the text model."""
        raise NotImplementedError

    @staticmethod
    def text_config(model):
        """The text model's config (heads, layers)."""
        raise NotImplementedError

    @staticmethod
    def token_ids(config) -> tuple[int, int | None, int | None]:
        """(audio, audio_bos, audio_eos) ids from the model config; a marker may be None (read from the tokenizer
        by its `AUDIO_TOKEN_NAMES` name, or absent when `AUDIO_MARKERS` is False)."""
        raise NotImplementedError

    @staticmethod
    def model_inputs(input_ids, features, feature_mask) -> dict:
        """Forward/generate kwargs from input_ids [B, T], features [B, n_mels, F] and feature_mask [B, F]."""
        raise NotImplementedError

    # ---- optional abilities, with their defaults ---------------------------------------------------------
    TOTAL_FRAMES: ClassVar[int | None] = None  # mel frames the encoder insists on (None: any length)
    DEFAULT_SYSTEM: ClassVar[str | None] = (
        None  # system prompt of real checkpoints (those with a chat template)
    )
    AUDIO_MARKERS: ClassVar[bool] = True  # begin/end markers around the placeholders (False: the run itself)
    AUDIO_TOKEN_NAMES: ClassVar[tuple[str, str, str]] = (
        AUDIO_BOS,
        AUDIO,
        AUDIO_EOS,
    )  # (bos, audio, eos) names
    END_OF_ANSWER: ClassVar[str] = (
        IM_END  # the token that closes an assistant turn (calibration's answer end)
    )

    @classmethod
    def featurize(cls, feature_extractor, audios, device="cpu"):
        """Checked clips -> (features [B, n_mels, F] float32 on `device`, zero-padded on the right; valid frames
        per clip); default: Whisper log-mel of each clip alone (`audio.log_mel`), padded to TOTAL_FRAMES."""
        return log_mel(feature_extractor, audios, [cls.TOTAL_FRAMES] * len(audios), device)

    @staticmethod
    def frame_count(num_samples: int) -> int:
        """Valid feature frames `featurize` gives a clip of `num_samples` (default: ceil(n / 160), Whisper's)."""
        return mel_frame_count(num_samples)

    @staticmethod
    def audio_token_count(frames: int) -> int:
        """Audio tokens for `frames` mel frames; default: two stride-2 stages (25 per second)."""
        return tokens_from_frames(frames)

    @staticmethod
    def encode_prompt(tokenizer, prompt: str, num_audio_tokens: int, system: str | None, audio_id: int):
        """input_ids [1, T] of one user turn; default: the Qwen template of `headrouter.engine.prompt`."""
        text = render_prompt(prompt, num_audio_tokens, system)
        return tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]

    @staticmethod
    def batch_group(num_samples: int) -> Hashable:
        """Clips with equal keys may share a padded batch (`LALM.batch_groups`); default: every clip together
        (the encoder masks feature padding, so a padded clip computes what it computes alone)."""
        return None

    @staticmethod
    def gate_window_frames(model) -> int | None:
        """Mel frames per independent encoder window, the unit of silence gating; None (default): the encoder
        has no independent windows, so gating is refused."""
        return None

    @staticmethod
    def load_feature_extractor(location):
        """The feature extractor of a checkpoint (default: Whisper's preprocessor_config.json)."""
        from transformers import WhisperFeatureExtractor

        return WhisperFeatureExtractor.from_pretrained(location)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        missing = [name for name in REQUIRED if not hasattr(cls, name)]
        assert not missing, f"adapter {cls.__name__} does not set {missing}"
