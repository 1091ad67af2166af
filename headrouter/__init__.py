"""HeadRouter: training-free audio-token pruning for large audio-language models.

The method (routing math, baselines, profiles, calibration, learned router, options) lives here; the engine
that runs a stock model with it applied lives in `headrouter.engine`. Names are imported on first use, so
`import headrouter.options` stays light (no torch).
"""

from importlib import import_module

__all__ = [
    "LALM",
    "AudioInputError",
    "GenerationOutput",
    "HeadRouter",
    "ProfileError",
    "Profiles",
    "PruneOptions",
    "Selection",
    "keep_count",
    "load_lalm",
]

_HOMES = {
    "HeadRouter": "headrouter.routing",
    "Selection": "headrouter.routing",
    "keep_count": "headrouter.routing",
    "ProfileError": "headrouter.profiles",
    "Profiles": "headrouter.profiles",
    "PruneOptions": "headrouter.options",
    "LALM": "headrouter.engine",
    "AudioInputError": "headrouter.engine",
    "GenerationOutput": "headrouter.engine",
    "load_lalm": "headrouter.engine",
}


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'headrouter' has no attribute {name!r}")
    return getattr(import_module(_HOMES[name]), name)


def __dir__():
    return sorted(__all__)
