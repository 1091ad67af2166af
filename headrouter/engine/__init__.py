"""The engine that runs a stock Hugging Face audio-language model with pruning applied: loading and adapters
(one per model family), audio features and prompts, the batched generation loop and its KV buffers, the
pruning hooks, silence gating. The method itself (routing math, baselines, profiles, calibration, learned
router, options) lives one level up in `headrouter`; the engine imports it, never the other way round."""

from .lalm import LALM, AudioInputError, GenerationOutput
from .loading import load_lalm

__all__ = ["LALM", "AudioInputError", "GenerationOutput", "load_lalm"]
