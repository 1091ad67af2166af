"""The engine's own decode loop, gpt-fast's shape over the stock Hugging Face modules.

`start` turns a pruned prefill (its next-token logits and its KV moved into `StaticKV` buffers) into a
`DecodeState`; `decode_step` then runs one token for the whole batch, layer by layer through the stock decoder
layers: masks and positions live on the device and advance in place, greedy choice and end-of-sequence
bookkeeping stay on the device, and the host asks "all done?" only every `EngineOptions.sync_every` steps.
The step is split in an idempotent part (`_compute` + `_choose`: run twice at the same step, it writes the same
values) that a CUDA graph can capture and replay, and `_advance` (a few tiny in-place increments).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from headrouter.engine.static_cache import StaticKV

__all__ = [
    "DecodeState",
    "EngineOptions",
    "LoopParts",
    "decode_step",
    "find_parts",
    "layer_pass",
    "next_positions",
    "start",
]

# The loop implements greedy choice with the processors of min_new_tokens, repetition_penalty and suppress_tokens
# (`_choose`); these settings add one it does not, so such a model uses the stock generate path
_PROCESSOR_SETTINGS = {
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "begin_suppress_tokens": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "sequence_bias": None,
    "encoder_repetition_penalty": 1.0,
    "exponential_decay_length_penalty": None,
    "renormalize_logits": False,
}


@dataclass(frozen=True)
class EngineOptions:
    """How `LALM.generate` runs (not what it computes: every setting gives the same tokens).

    loop: "owned" (this module: static KV buffers, one step over the stock layers) or "stock" (transformers'
    `generate` with the pruning hooks, the previous engine; also what a family the loop cannot serve uses).
    cuda_graphs: on CUDA, capture the decode step once per call and replay it (off: eager, for debugging).
    compile: run the decode step under `torch.compile` (CPU or GPU; compile time is paid on first use).
    sync_every: decode steps between the host's "all done?" checks (a finished batch runs at most this many
    steps more, whose tokens are discarded).
    """

    loop: str = "owned"
    cuda_graphs: bool = True
    compile: bool = False
    sync_every: int = 8

    def __post_init__(self) -> None:
        if self.loop not in ("owned", "stock"):
            raise ValueError(f"loop must be 'owned' or 'stock', got {self.loop!r}")
        if not isinstance(self.sync_every, int) or self.sync_every < 1:
            raise ValueError(f"sync_every must be an int >= 1, got {self.sync_every!r}")


@dataclass(frozen=True)
class LoopParts:
    """The stock modules the loop calls, found once per model."""

    embed: torch.nn.Module
    layers: torch.nn.ModuleList
    norm: torch.nn.Module
    lm_head: torch.nn.Module
    rotary: torch.nn.Module
    additive_mask: bool  # eager attention takes an additive float mask, SDPA a bool one
    repetition_penalty: float
    suppress_tokens: (
        torch.Tensor
    )  # [n] long on the model's device: never chosen (SuppressTokensLogitsProcessor)


def find_parts(model, layers, final_norm) -> tuple[LoopParts | None, str | None]:
    """(the modules the loop needs, None), or (None, why this model must use the stock generate path)."""
    text = next((m for m in model.modules() if getattr(m, "layers", None) is layers), None)
    if text is None or not hasattr(text, "rotary_emb") or not hasattr(text, "embed_tokens"):
        return None, "the text model has no rotary_emb/embed_tokens next to its layers"
    impl = getattr(text.config, "_attn_implementation", None) or "eager"
    if impl not in ("sdpa", "eager"):
        return None, f"attention implementation {impl!r} (the loop builds SDPA and eager masks only)"
    if any(getattr(layer.self_attn, "sliding_window", None) for layer in layers):
        return None, "sliding-window attention layers (the loop's masks are full-attention)"
    gen = getattr(model, "generation_config", None)
    for name, default in _PROCESSOR_SETTINGS.items():
        value = getattr(gen, name, default)
        if value not in (default, None, [], ()):
            return (
                None,
                f"generation config sets {name}={value!r}, a logits processor the loop does not implement",
            )
    head = model.get_output_embeddings()
    if head is None:
        return None, "the model has no output embeddings"
    penalty = float(getattr(gen, "repetition_penalty", None) or 1.0)
    # a device tensor: indexing with a host list inside a captured CUDA graph would copy from the host
    suppress = torch.tensor([int(t) for t in (getattr(gen, "suppress_tokens", None) or ())], dtype=torch.long)
    suppress = suppress.to(head.weight.device)
    parts = LoopParts(
        text.embed_tokens, layers, final_norm, head, text.rotary_emb, impl == "eager", penalty, suppress
    )
    return parts, None


@dataclass
class DecodeState:
    """Everything a decode step reads and writes, on the device; rows are samples, groups are layers < M
    (0) and >= M (1)."""

    parts: LoopParts
    kv: StaticKV
    visible: list[torch.Tensor]  # per group [B, 1, 1, S_g]: bool (SDPA) or additive float (eager) key mask
    pos_layout: tuple  # position-id leading dims of the model: () for [B, T], (3,) or (4,) for mRoPE
    rope_pos: torch.Tensor  # [B] the next token's RoPE position (every mRoPE axis: audio-only input)
    text_pos: torch.Tensor  # [B] the next token's text position (the layers' position_ids)
    tokens: torch.Tensor  # [B] the token the next step feeds in
    next_tokens: torch.Tensor  # [B] the token the step chose
    done: torch.Tensor  # [B] bool: reached end-of-sequence before this step
    done_next: torch.Tensor  # [B] bool: after this step
    out: torch.Tensor  # [B, max_new] chosen tokens (pad after a row's end)
    step: torch.Tensor  # [1] long: which output column the next choice fills
    eos: torch.Tensor  # [E] end-of-sequence ids
    pad_id: int
    min_new_tokens: int
    seen: torch.Tensor | None  # [B, V] bool: tokens so far, for the repetition penalty
    host_step: int = 0
    logits: list = field(default_factory=list)  # [B, V] raw logits per step (return_logits only)
    keep_logits: bool = False
    # eager runs attend over the columns written so far, and without a mask in a group with no padding (what
    # stock generate does); graph capture and torch.compile keep the whole buffers and masks (fixed shapes)
    eager_views: bool = False
    padded: tuple[bool, bool] = (True, True)  # per group: some row has hidden prefill columns (left padding)


def start(
    parts: LoopParts,
    kv: StaticKV,
    row_valid: list[torch.Tensor],
    positions: torch.Tensor,
    first_logits: torch.Tensor,
    input_ids: torch.Tensor,
    *,
    max_new_tokens: int,
    min_new_tokens: int,
    eos_ids,
    pad_id: int,
    keep_logits: bool = False,
) -> DecodeState:
    """The state after a prefill: row_valid [B, T_g] per group (False on padding, prefill columns only),
    positions: the prefill's position ids ([B, T] or [3|4, B, T]), first_logits [B, V] (the prefill's last
    position), input_ids [B, T]. Chooses the first token."""
    device = first_logits.device
    batch = first_logits.shape[0]
    caps = kv.capacity()
    dtype = kv.keys[0].dtype
    visible = []
    for g, valid in enumerate(row_valid):
        cols = torch.zeros(batch, caps[g], dtype=torch.bool, device=device)  # [B, S_g]
        cols[:, : valid.shape[1]] = valid
        if parts.additive_mask:
            mask = torch.zeros(batch, caps[g], dtype=dtype, device=device).masked_fill(
                ~cols, torch.finfo(dtype).min
            )
        else:
            mask = cols
        visible.append(mask[:, None, None, :])  # [B, 1, 1, S_g]
    lead, text_pos, rope_pos = next_positions(positions)
    padded = [not bool(v.all()) for v in row_valid]  # [1 or 2] groups; one host sync per call
    seen = None
    if parts.repetition_penalty != 1.0:
        seen = torch.zeros(batch, first_logits.shape[-1], dtype=torch.bool, device=device)
        seen.scatter_(1, input_ids, True)  # the stock processor penalizes every input id, padding included
    state = DecodeState(
        parts=parts,
        kv=kv,
        visible=visible,
        pos_layout=lead,
        rope_pos=rope_pos.clone(),
        text_pos=text_pos.clone(),
        tokens=torch.full((batch,), pad_id, dtype=torch.long, device=device),
        next_tokens=torch.full((batch,), pad_id, dtype=torch.long, device=device),
        done=torch.zeros(batch, dtype=torch.bool, device=device),
        done_next=torch.zeros(batch, dtype=torch.bool, device=device),
        out=torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=device),
        step=torch.zeros(1, dtype=torch.long, device=device),
        eos=torch.tensor(sorted(eos_ids), dtype=torch.long, device=device),
        pad_id=pad_id,
        min_new_tokens=min_new_tokens,
        seen=seen,
        keep_logits=keep_logits,
        padded=(padded[0], padded[-1]),  # one group (nothing pruned): layers >= M are padded as layers < M
    )
    if keep_logits:
        state.logits.append(first_logits.float().clone())
    _choose(state, first_logits.float())
    _finish_step(state)
    return state


def next_positions(positions: torch.Tensor) -> tuple[tuple, torch.Tensor, torch.Tensor]:
    """(position-id leading dims, the next token's text position [B], its RoPE position [B]) after a prefill
    with these position ids ([B, T] or [3|4, B, T])."""
    lead = tuple(positions.shape[:-2])
    if lead == (4,):  # Qwen2.5-Omni in generate: row 0 text positions, rows 1-3 the mRoPE axes
        text_pos = positions[0].amax(dim=-1) + 1  # [B]
        rope_pos = positions[1:].amax(dim=(0, 2)) + 1
    elif lead == ():
        text_pos = rope_pos = positions.amax(dim=-1) + 1
    else:
        rope_pos = positions.amax(dim=(0, 2)) + 1
        text_pos = rope_pos
    return lead, text_pos, rope_pos


def _compute(state: DecodeState) -> torch.Tensor:
    """One token through the stock layers for every row: logits [B, V] float32. Idempotent at a given step."""
    parts, kv = state.parts, state.kv
    for g, mask in enumerate(state.visible):  # the token being written sees itself
        mask.index_fill_(-1, kv.column[g], 0.0 if parts.additive_mask else True)
    masks = state.visible
    kv.view = None
    if state.eager_views:  # this step writes column prefill_len + host_step - 1: attend up to it
        kv.view = [n + state.host_step for n in kv.prefill_len]
        masks = [m[..., : kv.view[g]] if state.padded[g] else None for g, m in enumerate(state.visible)]
    return layer_pass(parts, kv, masks, state.tokens, state.text_pos, state.rope_pos, state.pos_layout)


def layer_pass(parts: LoopParts, kv, visible, tokens, text_pos, rope_pos, pos_layout) -> torch.Tensor:
    """tokens [B] through the stock layers (key/value written by `kv.update`, keys masked by visible[g]
    [B, 1, 1, S_g] per layer group), at text/RoPE positions [B] -> logits [B, V] float32."""
    hidden = parts.embed(tokens[:, None])  # [B, 1, D]
    text = text_pos[:, None]  # [B, 1]
    rope = text if pos_layout == () else rope_pos[None, :, None].expand(3, -1, 1)  # [3, B, 1]
    cos_sin = parts.rotary(hidden, rope)  # ([B, 1, d], [B, 1, d])
    for i, layer in enumerate(parts.layers):
        hidden = layer(
            hidden,
            attention_mask=visible[kv.group[i]],
            position_embeddings=cos_sin,
            position_ids=text,
            cache=kv,
            use_cache=True,
        )
        if isinstance(hidden, tuple):  # some families' layers return (hidden, extras)
            hidden = hidden[0]
    return parts.lm_head(parts.norm(hidden[:, -1])).float()  # [B, V]


def _choose(state: DecodeState, logits: torch.Tensor) -> None:
    """Greedy choice with the stock processors the loop supports; writes next_tokens, out[:, step],
    done_next. Idempotent at a given step (reads only what `_finish_step` changes)."""
    if state.min_new_tokens > 0:  # MinNewTokensLengthLogitsProcessor: no end-of-sequence before the minimum
        early = state.step < state.min_new_tokens  # [1]
        logits[:, state.eos] = torch.where(early, float("-inf"), logits[:, state.eos])
    if state.parts.suppress_tokens.numel():  # SuppressTokensLogitsProcessor
        logits.index_fill_(1, state.parts.suppress_tokens, float("-inf"))
    if state.seen is not None:  # RepetitionPenaltyLogitsProcessor
        p = state.parts.repetition_penalty
        logits = torch.where(state.seen, torch.where(logits < 0, logits * p, logits / p), logits)
    chosen = torch.where(state.done, state.pad_id, logits.argmax(dim=-1))  # [B]
    state.next_tokens.copy_(chosen)
    state.out.index_copy_(1, state.step, chosen[:, None])
    state.done_next.copy_(state.done | torch.isin(chosen, state.eos))
    if state.seen is not None:
        state.seen.scatter_(1, chosen[:, None], True)


def _finish_step(state: DecodeState) -> None:
    state.tokens.copy_(state.next_tokens)
    state.done.copy_(state.done_next)
    state.step.add_(1)
    state.host_step += 1


def _advance(state: DecodeState) -> None:
    """After a decode step: the next token goes one column and one position further."""
    state.kv.advance()
    state.rope_pos.add_(1)
    state.text_pos.add_(1)
    _finish_step(state)


def step_once(state: DecodeState) -> None:
    """The idempotent part of a decode step (what a CUDA graph captures)."""
    logits = _compute(state)
    if state.keep_logits:
        state.logits.append(logits.clone())
    _choose(state, logits)


def decode_step(state: DecodeState, runner=None) -> None:
    """One token for every row; `runner` replays a captured `step_once` when given."""
    if runner is None:
        step_once(state)
    else:
        runner()
    _advance(state)


def all_done(state: DecodeState) -> bool:
    return bool(state.done.all())
