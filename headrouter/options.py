"""PruneOptions: the one frozen, picklable options object of a pruning setting.

In a batch run it is built once from the command line (`pipeline.cli`), carried whole by `RunOptions.prune` and
`WorkerOptions.prune` to the inference actors, and passed unchanged to `LALM.generate`, whose hooks read it
(docs/pipeline.md, "Options flow")."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BUDGETS",
    "BUDGET_CEILING",
    "BUDGET_FLOOR",
    "DEFAULT_PREFILTER",
    "METHODS",
    "PROBE_INPUTS",
    "QUERY_TOKENS",
    "SKIP_SILENCE",
    "PruneOptions",
]

METHODS = (
    "vanilla",
    "random",
    "frame",
    "fastv",
    "dart",
    "headrouter",
    "headrouter-hard",
    "headrouter-norouter",
    "headrouter-noprefilter",
    "headrouter-oracle",
    "headrouter-learned",
)
# Layer M-1's normalized input (what its q/k projections see in the model) or its output (the residual
# stream after layers 0..M-1, RMS-normalized by layer M-1's input_layernorm before the projections).
PROBE_INPUTS = ("normed", "hidden")
# Text tokens forming the probe's query set: the instruction after the audio span (<|audio_eos|> excluded,
# through the assistant header), or every token outside the audio span (system prompt and user header too).
QUERY_TOKENS = ("after_audio", "all_text")
# Detectors of empty encoder windows (headrouter.engine.gating): none, an energy gate relative to the chunk, Silero VAD.
SKIP_SILENCE = ("off", "energy", "vad")
# How many audio tokens each sample keeps (headrouter.budget): "fixed" = floor(Na * retain) for every sample;
# "adaptive" = the fewest tokens holding a calibrated share of the sample's own importance, clipped to
# [BUDGET_FLOOR * retain, BUDGET_CEILING * retain] of its tokens (at most all of them), the share calibrated so
# that the mean kept fraction on the calibration split is `retain`. Random and Frame have no scores: always fixed.
BUDGETS = ("fixed", "adaptive")
BUDGET_FLOOR = 0.25
BUDGET_CEILING = 2.0

# The Frame pre-filter's intermediate budget: HeadRouter scores min(Na, ceil(2.0 * k)) evenly spaced
# candidates and keeps the best k. The paper leaves the ratio open; 2 halves the candidates per kept token.
# At retain >= 0.5 it does (almost) nothing: k = floor(Na * retain) >= (Na - 1) / 2, so 2k >= Na - 1 and at
# most one token is not a candidate; HeadRouter is then routing-only (headrouter == headrouter-noprefilter).
DEFAULT_PREFILTER = 2.0


@dataclass(frozen=True)
class PruneOptions:
    """How `LALM.generate` prunes audio tokens.

    method: one of `METHODS`. "vanilla" runs the stock model without hooks. "headrouter" = soft routing +
    Frame pre-filter; "-hard" = hard-threshold routing; "-norouter" = uniform head weights + pre-filter;
    "-noprefilter" = soft routing over all audio tokens; "-oracle" = the sample's true category profile
    (evaluation only: needs `categories=` in `LALM.generate`; the upper bound of any router over the two
    profiles); "-learned" = alpha from the classifier fitted by `jobs.calibrate` (`headrouter.learned`).
    retain: fraction of audio tokens kept, in [0, 1] (floor(Na * retain) kept, exact for decimals).
    layer: pruning layer M in [1, L-1]; layers < M see every token, layers >= M only the kept ones.
    profiles: path of a Profiles JSON; None uses the model folder's headrouter_profiles.json, else uniform.
    prefilter: Frame pre-filter ratio f (>= 1) for every headrouter method but -noprefilter; default
    `DEFAULT_PREFILTER` = 2.0. It scores m = min(Na, ceil(f * k)) evenly spaced candidates, so with f = 2 it
    does nothing at retain >= 0.5 (all tokens, or all but one, are candidates): it acts only below 0.5.
    probe_input: "normed" (default) or "hidden", see `PROBE_INPUTS`.
    query_tokens: "after_audio" (default) or "all_text", see `QUERY_TOKENS`.
    prune_audio_markers: False (default) keeps <|audio_bos|>/<|audio_eos|> and prunes only <|AUDIO|> tokens;
    True lets the markers be pruned like AudioMarathon does (the prunable span is then N + 2 tokens).
    seed: seed of the "random" method.
    skip_silence: "off" (default), "energy" or "vad" (`headrouter.engine.gating`): remove empty 2-s encoder windows
    before the audio encoder (Qwen2.5-Omni only), kept tokens keeping their original positions; `retain` then
    counts against the remaining audio tokens. A clip with every window empty comes back `silent`.
    budget: "fixed" (default) or "adaptive", see `BUDGETS`; "adaptive" needs profiles with a budget calibration
    (`python -m jobs.calibrate_budget`). `max_kept_fraction` bounds every sample's kept share without running
    the model (what a batch planner reserves KV for).
    override_profile_settings: use profiles calibrated under another layer / probe input / query tokens /
    pre-filter ratio anyway (a warning instead of `ProfileError`, see `Profiles.check_settings`).
    """

    method: str = "headrouter"
    retain: float = 0.6
    layer: int = 2
    profiles: str | None = None
    prefilter: float | None = DEFAULT_PREFILTER
    probe_input: str = "normed"
    query_tokens: str = "after_audio"
    prune_audio_markers: bool = False
    seed: int = 0
    override_profile_settings: bool = False
    skip_silence: str = "off"
    budget: str = "fixed"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if isinstance(self.retain, bool) or not isinstance(self.retain, int | float):
            raise ValueError(f"retain must be a number in [0, 1], got {self.retain!r}")
        if not 0.0 <= float(self.retain) <= 1.0:
            raise ValueError(f"retain must be in [0, 1], got {self.retain}")
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 1:
            raise ValueError(f"layer must be an int >= 1 (never prune at layer 0), got {self.layer!r}")
        if self.prefilter is not None and not float(self.prefilter) >= 1.0:
            raise ValueError(f"prefilter must be None or >= 1, got {self.prefilter}")
        if self.probe_input not in PROBE_INPUTS:
            raise ValueError(f"probe_input must be one of {PROBE_INPUTS}, got {self.probe_input!r}")
        if self.query_tokens not in QUERY_TOKENS:
            raise ValueError(f"query_tokens must be one of {QUERY_TOKENS}, got {self.query_tokens!r}")
        if self.skip_silence not in SKIP_SILENCE:
            raise ValueError(f"skip_silence must be one of {SKIP_SILENCE}, got {self.skip_silence!r}")
        if self.budget not in BUDGETS:
            raise ValueError(f"budget must be one of {BUDGETS}, got {self.budget!r}")

    @property
    def adaptive(self) -> bool:
        """True when each sample's kept count comes from its own scores (budget "adaptive", a scored method)."""
        return self.budget == "adaptive" and self.method not in ("vanilla", "random", "frame")

    @property
    def max_kept_fraction(self) -> float:
        """Upper bound of any sample's kept share of its audio tokens: floor(Na * this) tokens at most."""
        if self.method == "vanilla":
            return 1.0
        if not self.adaptive:
            return float(self.retain)
        return min(1.0, BUDGET_CEILING * float(self.retain))

    @property
    def routing(self) -> str | None:
        """HeadRouter routing mode for this method (see `routing.ROUTINGS`), None for the baselines."""
        return {
            "headrouter": "soft",
            "headrouter-noprefilter": "soft",
            "headrouter-hard": "hard",
            "headrouter-norouter": "none",
            "headrouter-oracle": "oracle",
            "headrouter-learned": "learned",
        }.get(self.method)

    @property
    def router_prefilter(self) -> float | None:
        """The pre-filter HeadRouter uses for this method (None for -noprefilter and the baselines)."""
        if self.routing is None or self.method == "headrouter-noprefilter":
            return None
        return self.prefilter
