"""Analytical FLOP counts of an audio-LLM prefill, and the speed-up bound token pruning can reach.

Counting rules (a matmul of [m, k] x [k, n] costs 2*m*k*n FLOP; norms, RoPE, softmax, biases, residual adds and
the embedding lookup are left out: they are linear in T and small next to the matmuls):
- per token and decoder layer: q/k/v/o projections and the gated MLP's three matrices;
- per decoder layer: causal attention, QK^T and PV, where query i attends to i + 1 keys:
  2 * (2 * H * d) * sum_{i<T}(i + 1) = 2 * H * d * T * (T + 1);
- layers < M run at the full length T, layers >= M at the kept length T' = T - Na + k;
- lm_head for the last position only (what generation needs from a prefill);
- the audio encoder separately: pruning inside the LLM never reduces it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = [
    "AUDIO_ENCODER_OMNI",
    "OMNI_3B_TEXT",
    "OMNI_7B_TEXT",
    "EncoderShape",
    "TextShape",
    "audio_encoder_flops",
    "prefill_flops",
    "probe_flops",
    "speedup_bound",
]


@dataclass(frozen=True)
class TextShape:
    """The decoder's shape: what the FLOP count depends on."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class EncoderShape:
    """A Whisper-like audio encoder: two convs (100 mel frames/s -> 50/s), transformer over 2-s windows."""

    d_model: int
    layers: int
    ffn: int
    mel_bins: int = 128
    window_frames: int = 100  # frames per attention window after the stride-2 conv (n_window 100 -> 2 s)
    output_dim: int = 2048


# Public config.json values (see ../shared/notes/method-and-models.md).
OMNI_3B_TEXT = TextShape(
    hidden=2048, intermediate=11008, layers=36, heads=16, kv_heads=2, head_dim=128, vocab=151936
)
OMNI_7B_TEXT = TextShape(
    hidden=3584, intermediate=18944, layers=28, heads=28, kv_heads=4, head_dim=128, vocab=152064
)
AUDIO_ENCODER_OMNI = EncoderShape(d_model=1280, layers=32, ffn=5120, output_dim=2048)


def _token_flops(s: TextShape) -> int:
    """Projection + MLP FLOPs of one token in one decoder layer."""
    q = s.heads * s.head_dim
    kv = s.kv_heads * s.head_dim
    proj = 2 * s.hidden * q + 2 * 2 * s.hidden * kv + 2 * q * s.hidden  # q, k+v, o
    mlp = 3 * 2 * s.hidden * s.intermediate  # gate, up, down
    return proj + mlp


def _attention_flops(s: TextShape, t: int) -> int:
    """Causal QK^T + PV of one layer over t tokens."""
    return 2 * s.heads * s.head_dim * t * (t + 1)


def prefill_flops(s: TextShape, seq_len: int, kept_len: int | None = None, layer: int = 2) -> dict:
    """FLOPs of one prefill: {"early", "late", "lm_head", "total"}.

    seq_len: T, the full prompt length; kept_len: T' seen by layers >= layer (None: T, i.e. no pruning).
    """
    kept = seq_len if kept_len is None else kept_len
    if not 0 <= kept <= seq_len:
        raise ValueError(f"kept_len must be in [0, {seq_len}], got {kept_len}")
    if not 0 <= layer <= s.layers:
        raise ValueError(f"layer must be in [0, {s.layers}], got {layer}")
    per_token = _token_flops(s)
    early = layer * (seq_len * per_token + _attention_flops(s, seq_len))
    late = (s.layers - layer) * (kept * per_token + _attention_flops(s, kept))
    lm_head = 2 * s.hidden * s.vocab
    return {"early": early, "late": late, "lm_head": lm_head, "total": early + late + lm_head}


def audio_encoder_flops(e: EncoderShape, audio_s: float) -> int:
    """FLOPs of encoding `audio_s` seconds (whole 2-s windows; the last one partly filled is counted whole)."""
    import math

    mel = int(round(audio_s * 100))  # 10 ms hop
    frames = math.ceil(mel / 2)  # after the stride-2 conv
    windows = math.ceil(frames / e.window_frames)
    conv = 2 * mel * e.mel_bins * 3 * e.d_model + 2 * frames * e.d_model * 3 * e.d_model  # kernel 3
    per_frame = 4 * 2 * e.d_model * e.d_model + 2 * 2 * e.d_model * e.ffn  # q k v o + fc1 fc2
    # bidirectional attention inside each window: QK^T + PV = 2 * 2 * W^2 * d_model
    attn = windows * 4 * e.window_frames**2 * e.d_model
    proj = 2 * math.ceil(frames / 2) * e.d_model * e.output_dim  # after the x2 pooling
    return conv + e.layers * (frames * per_frame + attn) + proj


def speedup_bound(s: TextShape, seq_len: int, kept_len: int, layer: int = 2, encoder_flops: int = 0) -> float:
    """Vanilla FLOPs / pruned FLOPs: the most pruning can speed up this prefill (plus `encoder_flops` on both)."""
    full = prefill_flops(s, seq_len, None, layer)["total"] + encoder_flops
    pruned = prefill_flops(s, seq_len, kept_len, layer)["total"] + encoder_flops
    return full / pruned


def probe_flops(s: TextShape, audio_tokens: int, query_tokens: int) -> int:
    """HeadRouter's probe at layer M-1: k_proj over the audio tokens, q_proj over the query tokens, and the
    per-head scores q . k over every (query, audio) pair (routing and top-k are linear and left out)."""
    k = 2 * s.hidden * s.kv_heads * s.head_dim * audio_tokens
    q = 2 * s.hidden * s.heads * s.head_dim * query_tokens
    return k + q + 2 * s.heads * s.head_dim * query_tokens * audio_tokens
