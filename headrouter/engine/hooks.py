"""Audio-token pruning applied to a stock Hugging Face decoder by forward hooks (no copied modeling code).

`apply_pruning` walks the decoder layers, asserts what it needs and registers:
  1. a pre-hook on the whole model: reads `input_ids` and the 2-D attention mask, finds each sample's audio span,
     decides prefill vs decode;
  2. a pre-hook on layer M-1's self-attention: keeps its normalized input and (cos, sin) for the scorers;
  3. a pre-hook on layer M (prefill): scores and selects per sample, then gathers every sample's kept positions
     into a right-aligned [B, K] layout (K = the largest kept count; shorter rows are padded on the left);
  4. pre-hooks on every layer >= M: gather (cos, sin) and position ids with the same indices, so kept tokens keep
     their original positions, and hand the layer a mask that hides the left padding of the kept layout; at decode
     the mask covers the K kept columns plus every generated token.
Layers < M keep the full (left-padded) sequence, so layer 0's cache length (what `generate` reads) stays in the
original index space and decoding needs nothing else. A batch is left-padded (the `generate` convention); each
sample is scored on its own rows only, so its selection is the one it gets alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from headrouter.attention import check_attention, project_qk, rope_fn
from headrouter.baselines import fastv_importance, select_dart, select_frame, select_random, topk_keep
from headrouter.budget import budget_rule
from headrouter.options import PruneOptions
from headrouter.profiles import Profiles
from headrouter.routing import HeadRouter, Selection, keep_count

__all__ = ["AudioTokenIds", "PruneHandle", "PruneRecord", "SampleInfo", "apply_pruning", "audio_spans"]


@dataclass(frozen=True)
class AudioTokenIds:
    """Token ids of the audio placeholder and its markers (None when the family has no markers)."""

    audio: int
    bos: int | None
    eos: int | None


@dataclass(frozen=True)
class SampleInfo:
    """Per-sample inputs of the selection rules: the `random` method's seed, the oracle router's category."""

    seed: int | None = None
    category: str | None = None


@dataclass
class PruneRecord:
    """What the last prefill decided for one sample (positions in the sample's own, unpadded sequence)."""

    seq_len: int = 0
    prunable: torch.Tensor | None = None  # [Na] sequence positions that could be pruned
    keep_audio: torch.Tensor | None = None  # [k] ascending indices into `prunable`
    keep: torch.Tensor | None = None  # [T_kept] ascending sequence positions seen by layers >= M
    selection: Selection | None = None
    scores: torch.Tensor | None = None  # [Na] the per-token scores an adaptive budget reads (scored methods)

    @property
    def audio_tokens(self) -> int:
        return 0 if self.prunable is None else int(self.prunable.numel())

    @property
    def kept_tokens(self) -> int:
        return 0 if self.keep_audio is None else int(self.keep_audio.numel())


@dataclass
class PruneHandle:
    """Registered hooks; `remove()` (or leaving a `with` block) restores the stock model.

    `records` holds one PruneRecord per sample of the last prefill; `record` is the first (batch of one).
    """

    pruner: _Pruner
    handles: list = field(default_factory=list)

    @property
    def records(self) -> list[PruneRecord]:
        return self.pruner.records

    @property
    def record(self) -> PruneRecord:
        return self.pruner.records[0]

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

    Exactly one contiguous run of audio placeholders is expected, between `bos` and `eos` when the family
    has markers.
    """
    is_audio = input_ids == ids.audio  # [T]
    if not bool(is_audio.any()):
        return None
    pos = is_audio.nonzero().flatten()  # [N]
    if ids.bos is not None and ids.eos is not None:
        bos = (input_ids == ids.bos).nonzero().flatten()
        eos = (input_ids == ids.eos).nonzero().flatten()
        if bos.numel() != 1 or eos.numel() != 1:
            raise ValueError(
                f"expected one audio span, found {bos.numel()} audio start and {eos.numel()} audio end markers"
            )
        b, e = int(bos[0]), int(eos[0])
        if int(pos[0]) != b + 1 or int(pos[-1]) != e - 1 or pos.numel() != e - b - 1:
            raise ValueError("audio placeholders must form one contiguous span between the audio markers")
    else:
        b, e = int(pos[0]) - 1, int(pos[-1]) + 1  # no markers: the span is the run itself
        if pos.numel() != e - b - 1:
            raise ValueError("audio placeholders must form one contiguous run")
    t = input_ids.shape[0]
    device = input_ids.device
    marked = ids.bos is not None and options.prune_audio_markers
    prunable = torch.arange(b, e + 1, device=device) if marked else pos
    if options.query_tokens == "after_audio":
        query = torch.arange(e + 1, t, device=device)
    else:
        inside = torch.zeros(t, dtype=torch.bool, device=device)
        inside[max(b, 0) : e + 1] = True
        query = (~inside).nonzero().flatten()
    return prunable, query


class _Pruner:
    def __init__(
        self, layers, final_norm, ids: AudioTokenIds, options: PruneOptions, router, samples, budget=None
    ):
        self.layers = layers
        self.final_norm = final_norm
        self.ids = ids
        self.options = options
        self.router = router
        self.samples = samples
        self.budget = budget  # headrouter.budget.BudgetRule of an adaptive budget, else None (fixed)
        self.m = options.layer
        self.records = [PruneRecord()]
        self.prefill = False
        self.active = False
        self.identity = True  # nothing pruned in this batch: the hooks leave every layer untouched
        self.full_len = 0
        self.pads: list[int] = []  # left padding of each row of the full sequence
        self.queries: list = []
        self.keep_idx = None  # [B, K] full-sequence positions gathered for layers >= M (padding slots: 0)
        self.kept_valid = None  # [B, K] False on the left padding of the kept layout
        self.padded = False  # kept_valid has a False somewhere
        self.prev_normed = None  # [B, T, D] layer M-1's normalized input
        self.prev_rope = None  # (cos, sin) [B, T, d]
        self.gathered = None  # (the full cos tensor, gathered (cos, sin) [B, K, d])
        self.prefill_mask = None  # [B, 1, K, K] the mask of layers >= M at this prefill
        attn = layers[self.m - 1].self_attn
        self.attn = attn
        self.num_heads = attn.config.num_attention_heads
        self.num_kv = attn.config.num_key_value_heads
        self.eager = getattr(attn.config, "_attn_implementation", "sdpa") == "eager"

    # 1. whole model: which call is this?
    def model_pre(self, module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        self.prefill = cache is None or cache.get_seq_length() == 0
        if not self.prefill:
            return None
        self.active = False
        self.identity = True
        if input_ids is None:
            raise ValueError("pruning needs input_ids (the audio span is found from them)")
        batch, t = input_ids.shape
        if self.samples is not None and len(self.samples) != batch:
            raise ValueError(f"{len(self.samples)} sample infos for a batch of {batch}")
        self.pads = _left_padding(kwargs.get("attention_mask"), batch, t)
        self.records, self.queries = [], []
        for b in range(batch):
            rec = PruneRecord(seq_len=t - self.pads[b])
            spans = audio_spans(input_ids[b, self.pads[b] :], self.ids, self.options)
            if spans is not None:
                rec.prunable, query = spans
                self.active = True
            else:
                query = None
            self.records.append(rec)
            self.queries.append(query)
        self.full_len = t
        return None

    # 2. layer M-1 attention: keep what the scorers need
    def attn_prev_pre(self, module, args, kwargs):
        if self.prefill and self.active:
            self.prev_normed = kwargs.get("hidden_states", args[0] if args else None)  # [B, T, D]
            cos, sin = kwargs["position_embeddings"]  # [B or 1, T, d]
            self.prev_rope = (cos, sin)
        return None

    # 3./4. layers >= M
    def layer_pre(self, index, module, args, kwargs):
        if not self.active:
            return None
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]  # [B, T or K, D]
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if not self.prefill:
            if self.identity or (not self.padded and kwargs.get("attention_mask") is None):
                return None  # no padding in the kept layout and a mask-free model: nothing to hide
            kwargs["attention_mask"] = self._decode_mask(index, hidden, cache, kwargs.get("attention_mask"))
            return args, kwargs
        if index == self.m:
            self._decide_batch(hidden, cache)
        if self.identity:
            return None
        if index == self.m:  # later layers receive the kept layout from layer M
            hidden = _gather(hidden, self.keep_idx)  # [B, T, D] -> [B, K, D]
        if "hidden_states" in kwargs:
            kwargs["hidden_states"] = hidden
        else:
            args = (hidden, *args[1:])
        kwargs = self._gather_prefill(kwargs)
        return args, kwargs

    def _gather_prefill(self, kwargs):
        cos, sin = kwargs["position_embeddings"]  # [B or 1, T, d]
        if self.gathered is None or self.gathered[0] is not cos:
            self.gathered = (cos, (_gather(cos, self.keep_idx), _gather(sin, self.keep_idx)))
        kwargs["position_embeddings"] = self.gathered[1]  # [B, K, d]
        pos = kwargs.get("position_ids")
        if isinstance(pos, torch.Tensor) and pos.shape[-1] == self.full_len:
            lead = pos.shape[:-2]  # () for [B, T]; (3,) or (4,) for mRoPE [3|4, B, T]
            idx = self.keep_idx.expand(*lead, *self.keep_idx.shape)
            kwargs["position_ids"] = pos.expand(*lead, self.keep_idx.shape[0], self.full_len).gather(-1, idx)
        mask = kwargs.get("attention_mask")
        if self.prefill_mask is not None:
            kwargs["attention_mask"] = self.prefill_mask
        elif isinstance(mask, torch.Tensor) or self.padded:
            k = self.keep_idx.shape[1]
            causal = torch.ones(k, k, dtype=torch.bool, device=self.keep_idx.device).tril()  # [K, K]
            allowed = causal[None] & self.kept_valid[:, None, :]  # [B, K, K]
            # a padding row attends to itself only: a row with no key at all would give NaN values
            allowed = allowed | torch.eye(k, dtype=torch.bool, device=allowed.device)[None]
            self.prefill_mask = self._model_mask(allowed[:, None], mask)  # [B, 1, K, K]
            kwargs["attention_mask"] = self.prefill_mask
        return kwargs

    def _decode_mask(self, index, hidden, cache, like):
        """[B, 1, q, K + generated] mask of a decode step at layer `index` >= M."""
        q = hidden.shape[1]
        past = cache.layers[index].keys.shape[-2] if cache is not None and len(cache.layers) > index else None
        if past is None:
            raise ValueError("pruned decoding needs the KV cache")
        batch, k = self.kept_valid.shape
        new = torch.ones(batch, past + q - k, dtype=torch.bool, device=self.kept_valid.device)
        cols = torch.cat([self.kept_valid, new], dim=1)  # [B, K + s]
        allowed = cols[:, None, :].expand(batch, q, past + q).clone()  # [B, q, K + s]
        if q > 1:  # several new tokens at once: causal among them
            allowed[:, :, past:] &= torch.ones(q, q, dtype=torch.bool, device=cols.device).tril()
        return self._model_mask(allowed[:, None], like)

    def _model_mask(self, allowed: torch.Tensor, like):
        """A bool mask in the form the model's attention expects (bool for SDPA, additive float for eager)."""
        dtype = like.dtype if isinstance(like, torch.Tensor) else None
        if dtype is None and self.eager:
            dtype = self.prev_normed.dtype if self.prev_normed is not None else torch.float32
        if dtype is None or dtype == torch.bool:
            return allowed
        zeros = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
        return zeros.masked_fill(~allowed, torch.finfo(dtype).min)

    def _decide_batch(self, layer_in: torch.Tensor, cache) -> None:
        """layer_in [B, T, D] (layer M-1's output) -> self.keep_idx / self.kept_valid [B, K]."""
        batch, t = layer_in.shape[:2]
        keeps = []
        for b in range(batch):
            pad, rec = self.pads[b], self.records[b]
            if rec.prunable is None:  # no audio in this sample: keep everything
                keep = torch.arange(t - pad, device=layer_in.device)
            else:
                keep = self._decide(b, layer_in[b, pad:], cache)
            rec.keep = keep
            keeps.append(keep + pad)  # positions in the padded full sequence
        k = max(int(x.numel()) for x in keeps)
        keep_idx = torch.zeros(batch, k, dtype=torch.long, device=layer_in.device)
        valid = torch.zeros(batch, k, dtype=torch.bool, device=layer_in.device)
        for b, keep in enumerate(keeps):
            n = int(keep.numel())
            keep_idx[b, k - n :] = keep
            valid[b, k - n :] = True
        # right alignment makes "every sample keeps all its tokens" the identity map on the padded sequence
        self.identity = k == t and all(int(x.numel()) == t - p for x, p in zip(keeps, self.pads))
        self.keep_idx, self.kept_valid = keep_idx, valid
        self.padded = not bool(valid.all())
        self.gathered = self.prefill_mask = None

    def _decide(self, b: int, layer_in: torch.Tensor, cache) -> torch.Tensor:
        """One sample: layer_in [Tb, D] (its unpadded rows) -> keep [T_kept] ascending positions in [0, Tb)."""
        rec, opt = self.records[b], self.options
        pad = self.pads[b]
        info = self.samples[b] if self.samples is not None else SampleInfo()
        prunable = rec.prunable  # [Na]
        na = prunable.numel()
        k = keep_count(na, opt.retain)
        method = opt.method
        normed = self.prev_normed[b, pad:]  # [Tb, D]
        with torch.no_grad():
            if method == "random":
                keep_audio = select_random(na, k, opt.seed if info.seed is None else info.seed)
            elif method == "frame":
                keep_audio = select_frame(na, k)
            elif method == "fastv":
                keys = self._prev_keys(b, cache)
                rec.scores = fastv_importance(self._fastv_query(b, normed), keys, prunable)  # [Na]
                k = k if self.budget is None else self.budget.count(rec.scores)
                keep_audio = topk_keep(rec.scores, k)
            elif method == "dart":
                hidden = self.final_norm(layer_in)  # [Tb, D]
                keys = self._prev_keys(b, cache)  # [H, Tb, d]
                if self.budget is not None:  # DART scores no tokens: the count comes from FastV's attention
                    rec.scores = fastv_importance(self._fastv_query(b, normed), keys, prunable)  # [Na]
                    k = self.budget.count(rec.scores)
                keys = keys.transpose(0, 1).reshape(layer_in.shape[0], -1)  # [Tb, H*d]
                keep_audio = select_dart(hidden, keys, prunable, k)
            elif opt.routing is not None:
                q_text, k_audio = self._probe(b, normed, layer_in)
                extra = {"category": info.category} if info.category is not None else {}
                if self.budget is not None:
                    extra["budget"] = self.budget
                rec.selection = self.router.select(q_text, k_audio, opt.retain, **extra)
                rec.scores = rec.selection.importance  # [Na]
                keep_audio = rec.selection.keep
            else:
                raise ValueError(f"no pruning rule for method {method!r}")
        keep_audio = keep_audio.to(prunable.device).long()
        rec.keep_audio = keep_audio
        keep_mask = torch.ones(layer_in.shape[0], dtype=torch.bool, device=prunable.device)
        keep_mask[prunable] = False
        keep_mask[prunable[keep_audio]] = True
        return keep_mask.nonzero().flatten()  # [T_kept] ascending

    def _probe(self, b: int, normed: torch.Tensor, layer_in: torch.Tensor):
        """No-RoPE probe: (q_text [H, Nt, d], k_audio [H, Na, d]) from layer M-1's q/k projections."""
        if self.options.probe_input == "normed":
            states = normed  # [Tb, D]
        else:
            states = self.layers[self.m - 1].input_layernorm(layer_in)  # [Tb, D]
        q, _ = project_qk(self.attn, states[self.queries[b]])  # [H, Nt, d]
        _, k = project_qk(self.attn, states[self.records[b].prunable])  # [Hkv, Na, d]
        return q, k.repeat_interleave(self.num_heads // self.num_kv, dim=0)  # [H, Na, d]

    def _rope(self, b: int):
        cos, sin = self.prev_rope  # [B or 1, T, d]
        row = b if cos.shape[0] > 1 else 0
        return cos[row, self.pads[b] :], sin[row, self.pads[b] :]  # [Tb, d]

    def _fastv_query(self, b: int, normed: torch.Tensor) -> torch.Tensor:
        """The sample's last token's query at layer M-1 with RoPE applied as in the real attention: [H, d]."""
        q, _ = project_qk(self.attn, normed[-1:])  # [H, 1, d]
        cos, sin = (x[-1:][None] for x in self._rope(b))  # [1, 1, d]
        q_rot, _ = rope_fn(self.attn)(q[None], q[None], cos, sin)  # [1, H, 1, d]
        return q_rot[0, :, 0]  # [H, d]

    def _prev_keys(self, b: int, cache) -> torch.Tensor:
        """Layer M-1's post-RoPE keys of sample b, GQA repeated: [H, Tb, d] (from the cache when it holds them)."""
        pad = self.pads[b]
        keys = None
        if cache is not None and len(cache.layers) >= self.m:
            cached = cache.layers[self.m - 1].keys  # [B, Hkv, T, d]
            if cached is not None and cached.dim() == 4 and cached.shape[-2] == self.full_len:
                keys = cached[b, :, pad:]
        if keys is None:
            _, k = project_qk(self.attn, self.prev_normed[b, pad:])  # [Hkv, Tb, d]
            cos, sin = (x[None] for x in self._rope(b))  # [1, Tb, d]
            _, k_rot = rope_fn(self.attn)(k[None], k[None], cos, sin)
            keys = k_rot[0]
        return keys.repeat_interleave(self.num_heads // self.num_kv, dim=0)  # [H, Tb, d]


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [B or 1, T, ...] gathered along dim 1 with index [B, K] -> [B, K, ...]."""
    x = x.expand(index.shape[0], *x.shape[1:])
    idx = index.view(*index.shape, *([1] * (x.dim() - 2))).expand(*index.shape, *x.shape[2:])
    return x.gather(1, idx)


def _left_padding(mask, batch: int, t: int) -> list[int]:
    """Left padding of each row from the 2-D attention mask [B, T]; a hole or right padding is an error."""
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        return [0] * batch
    valid = mask.bool()  # [B, T]
    pads = (~valid).sum(dim=1)  # [B]
    positions = torch.arange(t, device=valid.device)[None]  # [1, T]
    if not torch.equal(valid, positions >= pads[:, None]):
        raise ValueError("pruning needs a left-padded batch (attention_mask = zeros then ones in every row)")
    return [int(p) for p in pads.tolist()]


def apply_pruning(
    model,
    layers,
    final_norm,
    ids: AudioTokenIds,
    options: PruneOptions,
    router: HeadRouter | None = None,
    samples: list[SampleInfo] | None = None,
    profiles: Profiles | None = None,
) -> PruneHandle:
    """Register pruning hooks on a stock model; returns a handle whose `remove()` restores it.

    model: the module called with `input_ids` (e.g. the thinker); layers: its decoder layers (ModuleList);
    final_norm: the text model's final norm (DART's hidden states); router: required for headrouter methods;
    samples: per-sample SampleInfo of the batch (random seeds, oracle categories), or None; profiles: the
    model's profiles, whose budget calibration `options.budget == "adaptive"` reads (default: the router's).
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
    check_attention(attn)
    assert hasattr(layers[m - 1], "input_layernorm"), "decoder layer without input_layernorm"
    if router is not None:
        router.profiles.check_heads(attn.config.num_attention_heads)

    budget = None
    if options.adaptive:
        profiles = profiles if profiles is not None else getattr(router, "profiles", None)
        if profiles is None:
            raise ValueError(f"budget 'adaptive' for {options.method!r} needs the model's profiles")
        budget = budget_rule(profiles, options.method, options.retain)
    pruner = _Pruner(layers, final_norm, ids, options, router, samples, budget)
    handle = PruneHandle(pruner=pruner)
    handle.handles.append(model.register_forward_pre_hook(pruner.model_pre, with_kwargs=True))
    handle.handles.append(attn.register_forward_pre_hook(pruner.attn_prev_pre, with_kwargs=True))
    for i in range(m, num_layers):
        hook = (lambda index: lambda mod, a, kw: pruner.layer_pre(index, mod, a, kw))(i)
        handle.handles.append(layers[i].register_forward_pre_hook(hook, with_kwargs=True))
    return handle
