"""HeadRouter: training-free audio-token pruning for large audio-language models."""

from .profiles import ProfileError, Profiles
from .routing import HeadRouter, Selection, keep_count

__all__ = [
    "HeadRouter",
    "ProfileError",
    "Profiles",
    "Selection",
    "keep_count",
]

# model engine
from .engine import LALM, AudioInputError, GenerationOutput  # noqa: E402
from .loading import load_lalm  # noqa: E402
from .options import PruneOptions  # noqa: E402

__all__ += ["LALM", "AudioInputError", "GenerationOutput", "PruneOptions", "load_lalm"]
