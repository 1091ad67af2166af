"""Audio-token pruning applied to a stock Hugging Face decoder by forward hooks (no copied modeling code).

`apply_pruning` walks the decoder layers, asserts what it needs and registers:
  1. a pre-hook on the whole model: reads `input_ids`, finds the audio span, decides prefill vs decode;
  2. a pre-hook on layer M-1's self-attention: keeps its normalized input and (cos, sin) for the scorers;
  3. a pre-hook on layer M (prefill): scores, selects, and slices the hidden states to the kept positions;
  4. pre-hooks on every layer >= M: slice (cos, sin), position ids and any materialized mask with the same
     `keep`, so kept tokens keep their original positions; at decode only the mask's key columns are sliced.
Layers < M keep the full sequence, so layer 0's cache length (what `generate` reads) stays in the original
index space and decoding needs nothing else. One sample per forward (the engine prefills per sample).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch

from headrouter.baselines import fastv_importance, select_dart, select_frame, select_random, topk_keep
from headrouter.options import PruneOptions
from headrouter.routing import HeadRouter, Selection, keep_count

__all__ = ["AudioTokenIds", "PruneHandle", "PruneRecord", "apply_pruning", "audio_spans"]


@dataclass(frozen=True)
class AudioTokenIds:
    """Token ids of the audio placeholder and its markers, read from the model config."""

    audio: int
    bos: int
    eos: int


@dataclass
class PruneRecord:
    """What the last prefill decided (filled by the hooks, read by the engine and tests)."""

    seq_len: int = 0
    prunable: torch.Tensor | None = None  # [Na] sequence positions that could be pruned
    keep_audio: torch.Tensor | None = None  # [k] ascending indices into `prunable`
    keep: torch.Tensor | None = None  # [T_kept] ascending sequence positions seen by layers >= M
    selection: Selection | None = None
    prefills: int = 0

    @property
    def audio_tokens(self) -> int:
        return 0 if self.prunable is None else int(self.prunable.numel())

    @property
    def kept_tokens(self) -> int:
        return 0 if self.keep_audio is None else int(self.keep_audio.numel())


@dataclass
class PruneHandle:
    """Registered hooks; `remove()` (or leaving a `with` block) restores the stock model."""

    record: PruneRecord
    handles: list = field(default_factory=list)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def __enter__(self) -> PruneHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def audio_spans(input_ids: torch.Tensor, ids: AudioTokenIds, options: PruneOptions):
    """(prunable [Na], query [Nt]) sequence positions for one sample's input_ids [T]; None without audio.

    Exactly one contiguous `bos AUDIO* eos` span is expected.
    """
    is_audio = input_ids == ids.audio  # [T]
    if not bool(is_audio.any()):
        return None
    bos = (input_ids == ids.bos).nonzero().flatten()
    eos = (input_ids == ids.eos).nonzero().flatten()
    pos = is_audio.nonzero().flatten()  # [N]
    if bos.numel() != 1 or eos.numel() != 1:
        raise ValueError(
            f"expected one audio span, found {bos.numel()} <|audio_bos|> and {eos.numel()} <|audio_eos|>"
        )
    b, e = int(bos[0]), int(eos[0])
    if int(pos[0]) != b + 1 or int(pos[-1]) != e - 1 or pos.numel() != e - b - 1:
        raise ValueError(
            "audio placeholders must form one contiguous span between <|audio_bos|> and <|audio_eos|>"
        )
    t = input_ids.shape[0]
    device = input_ids.device
    prunable = torch.arange(b, e + 1, device=device) if options.prune_audio_markers else pos
    if options.query_tokens == "after_audio":
        query = torch.arange(e + 1, t, device=device)
    else:
        inside = torch.zeros(t, dtype=torch.bool, device=device)
        inside[b : e + 1] = True
        query = (~inside).nonzero().flatten()
    return prunable, query


def _rope_fn(attn):
    # The model's own apply_rotary_pos_emb (same module as its attention class), so FastV rotates exactly as
    # the real attention does, and tests can spy on it.
    return sys.modules[type(attn).__module__].apply_rotary_pos_emb


def _heads(x: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
    return x.view(x.shape[0], num_heads, head_dim).transpose(0, 1)  # [T, h*d] -> [h, T, d]


class _Pruner:
    def __init__(self, model, layers, final_norm, ids: AudioTokenIds, options: PruneOptions, router):
        self.layers = layers
        self.final_norm = final_norm
        self.ids = ids
        self.options = options
        self.router = router
        self.m = options.layer
        self.record = PruneRecord()
        self.prefill = False
        self.active = False
        self.full_len = 0
        self.prev_normed = None  # [T, D] layer M-1's normalized input
        self.prev_rope = None  # (cos, sin) [T, d]
        self.sliced_rope = None  # (id of the full cos tensor, sliced (cos, sin))
        attn = layers[self.m - 1].self_attn
        self.attn = attn
        self.num_heads = attn.config.num_attention_heads
        self.num_kv = attn.config.num_key_value_heads
        self.head_dim = attn.head_dim

    # 1. whole model: which call is this?
    def model_pre(self, module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        self.prefill = cache is None or cache.get_seq_length() == 0
        if not self.prefill:
            return None
        self.active = False
        if input_ids is None:
            raise ValueError("pruning needs input_ids (the audio span is found from them)")
        if input_ids.shape[0] != 1:
            raise ValueError(f"pruning hooks run one sample per forward, got batch {input_ids.shape[0]}")
        spans = audio_spans(input_ids[0], self.ids, self.options)
        self.record = _reset(self.record, input_ids.shape[1])
        if spans is None:
            return None
        self.active = True
        self.full_len = input_ids.shape[1]
        self.record.prunable, self.query = spans
        return None

    # 2. layer M-1 attention: keep what the scorers need
    def attn_prev_pre(self, module, args, kwargs):
        if self.prefill and self.active:
            hidden = kwargs.get(
                "hidden_states", args[0] if args else None
            )  # [1, T, D], after input_layernorm
            cos, sin = kwargs["position_embeddings"]  # [1, T, d]
            self.prev_normed = hidden[0]
            self.prev_rope = (cos[0], sin[0])
        return None

    # 3./4. layers >= M
    def layer_pre(self, index, module, args, kwargs):
        if not self.active:
            return None
        if not self.prefill:
            kwargs = self._slice_mask_decode(kwargs)
            return args, kwargs
        if "hidden_states" in kwargs:
            hidden = kwargs.pop("hidden_states")
        else:
            hidden, args = args[0], args[1:]
        if index == self.m:
            keep = self._decide(hidden[0], kwargs.get("cache", kwargs.get("past_key_values")))
            self.record.keep = keep
        keep = self.record.keep
        if hidden.shape[1] == self.full_len:
            hidden = hidden.index_select(1, keep)  # [1, T, D] -> [1, T_kept, D]
        kwargs = self._slice_prefill(kwargs, keep)
        return (hidden, *args), kwargs

    def _slice_prefill(self, kwargs, keep):
        cos, sin = kwargs["position_embeddings"]  # [1, T, d]
        if self.sliced_rope is None or self.sliced_rope[0] is not cos:
            self.sliced_rope = (cos, (cos.index_select(-2, keep), sin.index_select(-2, keep)))
        kwargs["position_embeddings"] = self.sliced_rope[1]
        pos = kwargs.get("position_ids")
        if isinstance(pos, torch.Tensor) and pos.shape[-1] == self.full_len:
            kwargs["position_ids"] = pos.index_select(-1, keep)
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor):
            # materialized 4-D mask [B, 1, T, T] sized from layer 0: keep rows and columns of kept tokens
            kwargs["attention_mask"] = mask.index_select(-2, keep).index_select(-1, keep)
        return kwargs

    def _slice_mask_decode(self, kwargs):
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor):
            # [B, 1, q, T + s] over layer 0's keys -> the kept prompt columns plus every generated token
            kv = mask.shape[-1]
            cols = torch.cat([self.record.keep, torch.arange(self.full_len, kv, device=mask.device)])
            kwargs["attention_mask"] = mask.index_select(-1, cols)
        return kwargs

    def _decide(self, layer_in: torch.Tensor, cache) -> torch.Tensor:
        """layer_in [T, D] (layer M-1's output) -> keep [T_kept] ascending sequence positions."""
        rec, opt = self.record, self.options
        prunable = rec.prunable  # [Na]
        na = prunable.numel()
        k = keep_count(na, opt.retain)
        method = opt.method
        with torch.no_grad():
            if method == "random":
                keep_audio = select_random(na, k, opt.seed)
            elif method == "frame":
                keep_audio = select_frame(na, k)
            elif method == "fastv":
                keep_audio = topk_keep(
                    fastv_importance(self._fastv_query(), self._prev_keys(cache), prunable), k
                )
            elif method == "dart":
                hidden = self.final_norm(layer_in)  # [T, D]
                keys = self._prev_keys(cache).transpose(0, 1).reshape(layer_in.shape[0], -1)  # [T, H*d]
                keep_audio = select_dart(hidden, keys, prunable, k)
            elif opt.routing is not None:
                q_text, k_audio = self._probe(layer_in)
                rec.selection = self.router.select(q_text, k_audio, opt.retain)
                keep_audio = rec.selection.keep
            else:
                raise ValueError(f"no pruning rule for method {method!r}")
        keep_audio = keep_audio.to(prunable.device).long()
        rec.keep_audio = keep_audio
        keep_mask = torch.ones(self.full_len, dtype=torch.bool, device=prunable.device)
        keep_mask[prunable] = False
        keep_mask[prunable[keep_audio]] = True
        rec.prefills += 1
        return keep_mask.nonzero().flatten()  # [T_kept] ascending

    def _probe(self, layer_in: torch.Tensor):
        """No-RoPE probe: (q_text [H, Nt, d], k_audio [H, Na, d]) from layer M-1's q/k projections (with bias)."""
        if self.options.probe_input == "normed":
            states = self.prev_normed  # [T, D]
        else:
            states = self.layers[self.m - 1].input_layernorm(layer_in)  # [T, D]
        q = _heads(self.attn.q_proj(states[self.query]), self.num_heads, self.head_dim)  # [H, Nt, d]
        k = _heads(self.attn.k_proj(states[self.record.prunable]), self.num_kv, self.head_dim)  # [Hkv, Na, d]
        return q, k.repeat_interleave(self.num_heads // self.num_kv, dim=0)  # [H, Na, d]

    def _fastv_query(self) -> torch.Tensor:
        """The last token's query at layer M-1 with RoPE applied as in the real attention: [H, d]."""
        last = self.prev_normed[-1:]  # [1, D]
        q = _heads(self.attn.q_proj(last), self.num_heads, self.head_dim)[None]  # [1, H, 1, d]
        cos, sin = (x[-1:][None] for x in self.prev_rope)  # [1, 1, d]
        q_rot, _ = _rope_fn(self.attn)(q, q, cos, sin)
        return q_rot[0, :, 0]  # [H, d]

    def _prev_keys(self, cache) -> torch.Tensor:
        """Layer M-1's post-RoPE keys, GQA repeated: [H, T, d] (from the cache when it holds them)."""
        keys = None
        if cache is not None and len(cache.layers) >= self.m:
            cached = cache.layers[self.m - 1].keys  # [1, Hkv, T, d]
            if cached is not None and cached.dim() == 4 and cached.shape[-2] == self.full_len:
                keys = cached[0]
        if keys is None:
            k = _heads(self.attn.k_proj(self.prev_normed), self.num_kv, self.head_dim)[None]  # [1, Hkv, T, d]
            cos, sin = (x[None] for x in self.prev_rope)  # [1, T, d]
            _, k_rot = _rope_fn(self.attn)(k, k, cos, sin)
            keys = k_rot[0]
        return keys.repeat_interleave(self.num_heads // self.num_kv, dim=0)  # [H, T, d]


def _reset(record: PruneRecord, seq_len: int) -> PruneRecord:
    record.seq_len = seq_len
    record.prunable = record.keep_audio = record.keep = None
    record.selection = None
    return record


def apply_pruning(
    model,
    layers,
    final_norm,
    ids: AudioTokenIds,
    options: PruneOptions,
    router: HeadRouter | None = None,
) -> PruneHandle:
    """Register pruning hooks on a stock model; returns a handle whose `remove()` restores it.

    model: the module called with `input_ids` (e.g. the thinker); layers: its decoder layers (ModuleList);
    final_norm: the text model's final norm (DART's hidden states); router: required for headrouter methods.
    Prunes at layer `options.layer` (M in [1, L-1]) during prefill; decode is left to the stock code.
    """
    num_layers = len(layers)
    m = options.layer
    if not 1 <= m <= num_layers - 1:
        raise ValueError(f"pruning layer must be in [1, {num_layers - 1}] for {num_layers} layers, got {m}")
    if options.method == "vanilla":
        raise ValueError("vanilla runs without hooks")
    if options.routing is not None and router is None:
        raise ValueError(f"method {options.method!r} needs a HeadRouter")
    attn = layers[m - 1].self_attn
    for name in ("q_proj", "k_proj", "config", "head_dim"):
        assert hasattr(attn, name), f"layer {m - 1} attention has no {name}: unsupported architecture"
    assert hasattr(layers[m - 1], "input_layernorm"), "decoder layer without input_layernorm"
    assert attn.q_proj.bias is not None and attn.k_proj.bias is not None, "expected q/k projections with bias"
    assert hasattr(sys.modules[type(attn).__module__], "apply_rotary_pos_emb"), "no apply_rotary_pos_emb"
    if router is not None:
        router.profiles.check_heads(attn.config.num_attention_heads)

    pruner = _Pruner(model, layers, final_norm, ids, options, router)
    handle = PruneHandle(record=pruner.record)
    handle.handles.append(model.register_forward_pre_hook(pruner.model_pre, with_kwargs=True))
    handle.handles.append(attn.register_forward_pre_hook(pruner.attn_prev_pre, with_kwargs=True))
    for i in range(m, num_layers):
        hook = (lambda index: lambda mod, a, kw: pruner.layer_pre(index, mod, a, kw))(i)
        handle.handles.append(layers[i].register_forward_pre_hook(hook, with_kwargs=True))
    return handle
