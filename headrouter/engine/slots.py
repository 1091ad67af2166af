"""Decode slots for continuous batching: S rows, each at its own step, refilled one row at a time.

A slot row holds one request. Its KV is left-aligned in every layer group (g = 0: layers < M, the whole input;
g = 1: layers >= M, the kept layout of the pruned prefill): prefill columns [0, n_g), then one decode column per
new token, so the write column is per row (`SlotKV.column[g]`, [S]) and the key mask of a row is simply
"column <= its write column". Every visible column was written by the row's current occupant, which is why an
old occupant's KV can never leak into a new one (`fill` also zeroes the rest of the row). Step, positions,
chosen tokens, per-request max/min new tokens and end-of-sequence state are per row and stay on the device; a
step reads and writes only the state's tensors in place (fixed shapes, no host syncs), so `step_once` can be
captured as a CUDA graph once per state and replayed across refills.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from headrouter.engine.loop import LoopParts, layer_pass

__all__ = ["SlotKV", "SlotState", "advance", "copy_rows", "fill", "new_state", "step_once"]


class SlotKV:
    """Per-layer key/value buffers [S, Hkv, C_g, d] in two groups, written at a per-row column ([S] long per
    group). Quacks like a transformers `Cache` where the stock attention touches it (`update`)."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], group: list[int]):
        self.keys, self.values = keys, values  # [S, Hkv, C_g, d] per layer
        self.group = group  # [L] 0 or 1
        rows, device = int(keys[0].shape[0]), keys[0].device
        self.column = [torch.zeros(rows, dtype=torch.long, device=device) for _ in range(2)]  # [S] each
        self.capacity = [0, 0]
        for i, k in enumerate(keys):
            self.capacity[group[i]] = int(k.shape[-2])
        if 1 not in group:
            self.capacity[1] = self.capacity[0]

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        """Write one step's key/value [S, Hkv, 1, d] at each row's column; return the whole buffers."""
        g = self.group[layer_idx]
        # a finished row keeps stepping until the host frees it: clamp so its (ignored) write stays in bounds
        col = self.column[g].clamp(max=self.capacity[g] - 1)  # [S]
        index = col[:, None, None, None].expand_as(key_states)  # [S, Hkv, 1, d]
        self.keys[layer_idx].scatter_(2, index, key_states)
        self.values[layer_idx].scatter_(2, index, value_states)
        return self.keys[layer_idx], self.values[layer_idx]

    def nbytes(self) -> int:
        return sum(
            k.numel() * k.element_size() + v.numel() * v.element_size()
            for k, v in zip(self.keys, self.values)
        )


@dataclass
class SlotState:
    """Everything a slot step reads and writes, on the device; rows are slots."""

    parts: LoopParts
    kv: SlotKV
    visible: list[torch.Tensor]  # per group [S, 1, 1, C_g]: bool (SDPA) or additive float (eager) key mask
    pos_layout: tuple  # position-id leading dims of the model: () for [B, T], (3,) or (4,) for mRoPE
    rope_pos: torch.Tensor  # [S] the next token's RoPE position
    text_pos: torch.Tensor  # [S] the next token's text position
    tokens: torch.Tensor  # [S] the token the next step feeds in
    next_tokens: torch.Tensor  # [S] the token the step chose
    done: torch.Tensor  # [S] bool: finished (or free) before this step
    done_next: torch.Tensor  # [S] bool: after this step
    out: torch.Tensor  # [S, max_new] chosen tokens
    step: torch.Tensor  # [S] long: tokens chosen so far (the output column the next choice fills)
    max_new: torch.Tensor  # [S] long: the request's max_new_tokens
    min_new: torch.Tensor  # [S] long: the request's min_new_tokens
    eos: torch.Tensor  # [E] end-of-sequence ids
    pad_id: int
    seen: torch.Tensor | None  # [S, V] bool: tokens so far, for the repetition penalty

    @property
    def rows(self) -> int:
        return int(self.tokens.shape[0])


def new_state(parts: LoopParts, group: list[int], rows: int, capacity: list[int], max_new: int, pos_layout,
              like: list[torch.Tensor], vocab: int, eos_ids, pad_id: int, pos_dtype=torch.long) -> SlotState:  # fmt: skip
    """An empty state of `rows` free slots; capacity [2] columns per group; like: one cached key tensor
    [B, Hkv, T, d] per layer (dtype, device, heads and head size of each layer's buffers)."""
    device, dtype = like[0].device, like[0].dtype
    keys, values = [], []
    for i, k in enumerate(like):
        shape = (rows, k.shape[1], capacity[group[i]], k.shape[-1])  # [S, Hkv, C_g, d]
        keys.append(torch.zeros(shape, dtype=k.dtype, device=device))
        values.append(torch.zeros(shape, dtype=k.dtype, device=device))
    kv = SlotKV(keys, values, group)
    visible = []
    for g in range(2):
        if parts.additive_mask:
            mask = torch.full(
                (rows, 1, 1, kv.capacity[g]), torch.finfo(dtype).min, dtype=dtype, device=device
            )
        else:
            mask = torch.zeros(rows, 1, 1, kv.capacity[g], dtype=torch.bool, device=device)
        visible.append(mask)

    def longs(value):
        return torch.full((rows,), value, dtype=torch.long, device=device)

    return SlotState(
        parts=parts,
        kv=kv,
        visible=visible,
        pos_layout=pos_layout,
        rope_pos=torch.zeros(rows, dtype=pos_dtype, device=device),  # the prefill positions' dtype
        text_pos=torch.zeros(rows, dtype=pos_dtype, device=device),
        tokens=longs(pad_id),
        next_tokens=longs(pad_id),
        done=torch.ones(rows, dtype=torch.bool, device=device),
        done_next=torch.ones(rows, dtype=torch.bool, device=device),
        out=torch.full((rows, max_new), pad_id, dtype=torch.long, device=device),
        step=longs(0),
        max_new=longs(1),
        min_new=longs(0),
        eos=torch.tensor(sorted(eos_ids), dtype=torch.long, device=device),
        pad_id=pad_id,
        seen=torch.zeros(rows, vocab, dtype=torch.bool, device=device)
        if parts.repetition_penalty != 1.0
        else None,
    )


def fill(state: SlotState, slots: torch.Tensor, cache, valid: list[torch.Tensor], text_pos, rope_pos,
         first: torch.Tensor, input_ids: torch.Tensor, max_new: torch.Tensor, min_new: torch.Tensor) -> None:  # fmt: skip
    """Put the R rows of one prefill into the free slots `slots` [R]: each row's valid (right-aligned) cache
    columns go left-aligned into its slot, the rest of the slot zeroed; positions, limits and the first token.

    cache: the prefill's DynamicCache (per layer [R, Hkv, W_g, d]); valid: per group [R, W_g] bool, a suffix
    per row (left padding False); text_pos/rope_pos [R]; first [R, V] float32 logits; input_ids [R, T] (the
    repetition penalty's seen set: each row's own ids, without the batch's padding, as alone).
    """
    kv = state.kv
    lengths = [v.sum(dim=1) for v in valid]  # per group [R] valid columns
    if len(lengths) == 1:
        lengths.append(lengths[0])
        valid = [valid[0], valid[0]]
    for i, layer in enumerate(cache.layers):
        g = kv.group[i]
        src_k, src_v = layer.keys, layer.values  # [R, Hkv, W_g, d]
        width, cap = int(src_k.shape[-2]), kv.capacity[g]
        cols = torch.arange(cap, device=src_k.device)  # [C_g]
        start = width - lengths[g]  # [R] first valid column of each row
        index = (start[:, None] + cols[None]).clamp(max=width - 1)  # [R, C_g]
        keep = cols[None] < lengths[g][:, None]  # [R, C_g]
        index = index[:, None, :, None].expand(-1, src_k.shape[1], -1, src_k.shape[-1])  # [R, Hkv, C_g, d]
        for src, dst in ((src_k, kv.keys[i]), (src_v, kv.values[i])):
            rows = src.gather(2, index) * keep[:, None, :, None].to(src.dtype)  # [R, Hkv, C_g, d]
            dst.index_copy_(0, slots, rows)
        layer.keys = layer.values = None  # release the prefill's copy layer by layer
    for g in range(2):
        kv.column[g].index_copy_(0, slots, lengths[g])
    state.text_pos.index_copy_(0, slots, text_pos.to(state.text_pos.dtype))
    state.rope_pos.index_copy_(0, slots, rope_pos.to(state.rope_pos.dtype))
    state.max_new.index_copy_(0, slots, max_new)
    state.min_new.index_copy_(0, slots, min_new)
    state.step.index_fill_(0, slots, 0)
    state.done.index_fill_(0, slots, False)
    state.out.index_fill_(0, slots, state.pad_id)
    seen = None
    if state.seen is not None:
        seen = torch.zeros(len(slots), state.seen.shape[1], dtype=torch.bool, device=first.device)  # [R, V]
        ids = torch.where(valid[0], input_ids, input_ids[:, -1:])  # [R, T] padding -> the row's last id
        seen.scatter_(1, ids, True)
    chosen = pick(
        state, first.clone(), state.step[slots], state.min_new[slots], state.done[slots], seen
    )  # [R]
    state.out[slots, 0] = chosen
    state.tokens.index_copy_(0, slots, chosen)
    state.step.index_fill_(0, slots, 1)
    state.done.index_copy_(0, slots, torch.isin(chosen, state.eos) | (max_new <= 1))
    if seen is not None:
        seen.scatter_(1, chosen[:, None], True)
        state.seen.index_copy_(0, slots, seen)


def pick(state: SlotState, logits, step, min_new, done, seen) -> torch.Tensor:
    """Greedy choice [R] of rows at their own steps [R] with the stock processors the loop supports
    (MinNewTokens per row, SuppressTokens, RepetitionPenalty); finished rows get the pad id."""
    early = (step < min_new)[:, None]  # [R, 1] no end-of-sequence before the row's minimum
    logits[:, state.eos] = torch.where(early, float("-inf"), logits[:, state.eos])
    if state.parts.suppress_tokens.numel():  # [n] on the device (no host copy inside a captured graph)
        logits.index_fill_(1, state.parts.suppress_tokens, float("-inf"))
    if seen is not None:
        p = state.parts.repetition_penalty
        logits = torch.where(seen, torch.where(logits < 0, logits * p, logits / p), logits)
    return torch.where(done, state.pad_id, logits.argmax(dim=-1))  # [R]


def step_once(state: SlotState) -> None:
    """One token for every slot, each at its own column and step (what a CUDA graph captures). Idempotent:
    run twice before `advance`, it writes the same values."""
    kv = state.kv
    for g, mask in enumerate(state.visible):  # a row sees its columns up to the one being written
        cols = torch.arange(kv.capacity[g], device=mask.device)  # [C_g]
        seen = (cols[None] <= kv.column[g][:, None])[:, None, None, :]  # [S, 1, 1, C_g]
        if state.parts.additive_mask:
            mask.copy_(torch.where(seen, 0.0, torch.finfo(mask.dtype).min))
        else:
            mask.copy_(seen)
    logits = layer_pass(state.parts, kv, state.visible, state.tokens, state.text_pos, state.rope_pos,
                        state.pos_layout)  # fmt: skip  # [S, V]
    chosen = pick(state, logits, state.step, state.min_new, state.done, state.seen)  # [S]
    state.next_tokens.copy_(chosen)
    col = state.step.clamp(max=state.out.shape[1] - 1)[:, None]  # [S, 1]
    state.out.scatter_(1, col, torch.where(state.done[:, None], state.out.gather(1, col), chosen[:, None]))
    state.done_next.copy_(state.done | torch.isin(chosen, state.eos) | (state.step + 1 >= state.max_new))
    if state.seen is not None:
        state.seen.scatter_(1, chosen[:, None], True)


def advance(state: SlotState) -> None:
    """After a step: rows that chose a token move one column, position and step on; finished rows stay."""
    live = (~state.done).long()  # [S]
    for col in state.kv.column:
        col.add_(live)
    state.text_pos.add_(live.to(state.text_pos.dtype))
    state.rope_pos.add_(live.to(state.rope_pos.dtype))
    state.step.add_(live)
    state.tokens.copy_(state.next_tokens)
    state.done.copy_(state.done_next)


def copy_rows(old: SlotState, new: SlotState) -> None:
    """Move every slot of `old` into `new` (same rows, at least as many columns per group): a capacity grow."""
    for i in range(len(old.kv.keys)):
        width = old.kv.keys[i].shape[-2]
        new.kv.keys[i][:, :, :width] = old.kv.keys[i]  # [S, Hkv, C_g, d]
        new.kv.values[i][:, :, :width] = old.kv.values[i]
    for g in range(2):
        new.kv.column[g].copy_(old.kv.column[g])
    for name in ("rope_pos", "text_pos", "tokens", "next_tokens", "done", "done_next", "out", "step", "max_new",
                 "min_new", "seen"):  # fmt: skip
        if getattr(old, name) is not None:
            getattr(new, name).copy_(getattr(old, name))
