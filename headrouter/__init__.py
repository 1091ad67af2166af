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
