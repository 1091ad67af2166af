"""One generate call on the engine's own loop: the pruned prefill through the stock model, then `loop` steps.

The prefill is one forward of the stock model with the pruning hooks (selection per sample as before, the
kept layout gathered at layer M); its KV moves into `StaticKV` buffers (layers < M: the longest input, layers
>= M: the largest kept count, each plus max_new_tokens) and the hooks come off: decoding runs the bare stock
layers. What comes back is what the stock path returns (tokens, per-step logits, timings, the hooks' records).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from headrouter.engine.kv import per_token_bytes
from headrouter.engine.loop import EngineOptions, LoopParts, all_done, decode_step, start
from headrouter.engine.static_cache import StaticKV

__all__ = ["CallResult", "Prefilled", "kv_slots", "prefill", "run_owned"]


@dataclass
class CallResult:
    """A call's raw outcome: new tokens per row (up to max_new_tokens, pad after the end), per-row step logits
    ([steps, V] each, with return_logits), prefill and decode seconds, cache bytes per token per layer, the
    hooks' handle (records) or None, and the KV slots the buffers held (0 on the stock path)."""

    tokens: list[list[int]]
    logits: list | None
    prefill_s: float
    decode_s: float
    per_token: list[int]
    handle: object
    kv_slots: int


def kv_slots(batch: int, num_layers: int, layer: int, longest: int, most_kept: int, max_new: int) -> int:
    """KV token slots the loop allocates for one call, summed over layers and rows:
    B * (M * (longest input + max_new) + (L - M) * (largest kept count + max_new)).
    Unpruned (vanilla, or nothing pruned) most_kept == longest."""
    return batch * (layer * (longest + max_new) + (num_layers - layer) * (most_kept + max_new))


@dataclass
class Prefilled:
    """A pruned prefill's outcome: next-token logits [B, V] float32 (the last position), its DynamicCache
    (layers < M: [B, Hkv, T, d], layers >= M: the kept layout [B, Hkv, K, d]), the prefill's position ids
    ([B, T] or [3|4, B, T]), valid columns per layer group ([B, T] and, pruned, the kept layout's [B, K]),
    the layer group of each layer (all 0 when nothing was pruned), cache bytes per token per layer, seconds."""

    first: torch.Tensor
    cache: object
    positions: torch.Tensor
    valid: list
    group: list[int]
    per_token: list[int]
    seconds: float


def prefill(lalm, parts: LoopParts, batch: dict, handle, m: int, sync, keep=None) -> Prefilled:
    """`batch` through `lalm.model` with the pruning hooks in `handle` (removed here, whatever happens);
    `keep(cache, group)` runs on the cache inside the timed region (run_owned moves it into StaticKV there)."""
    model = lalm.model
    head = model.get_output_embeddings().register_forward_pre_hook(_last_position_only)
    # the positions generate() would use: the batch's own (window gating keeps kept tokens' original positions),
    # else from the 2-D mask (1-D families) or the model's mRoPE rule
    batch = dict(batch)
    positions = batch.pop("position_ids", None)
    if positions is None:
        positions = model._prepare_position_ids_for_generation(batch["input_ids"], batch)
    try:
        with torch.inference_mode():
            sync()
            t0 = time.perf_counter()
            out = model(**batch, position_ids=positions, use_cache=True)
            cache = getattr(out, "cache", None) or out.past_key_values
            first = out.logits[:, -1].float()  # [B, V]
            per_token = per_token_bytes(cache)  # [L] bytes per cached token of one sample
            pruner = handle.pruner if handle is not None else None
            pruned = pruner is not None and not pruner.identity
            group = [0 if (i < m or not pruned) else 1 for i in range(len(parts.layers))]
            if keep is not None:
                cache = keep(cache, group)
            del out
            sync()
            seconds = time.perf_counter() - t0
    finally:
        head.remove()
        if handle is not None:
            handle.remove()
    valid = [batch["attention_mask"].bool()]  # [B, T] layers < M: the left padding hidden
    if pruned:
        valid.append(pruner.kept_valid)  # [B, K] layers >= M: the kept layout's left padding hidden
    return Prefilled(first, cache, positions, valid, group, per_token, seconds)


def run_owned(lalm, parts: LoopParts, engine: EngineOptions, batch: dict, handle, m: int, *,
              max_new_tokens: int, min_new_tokens: int, return_logits: bool, sync) -> CallResult:  # fmt: skip
    """Prefill `batch` through `lalm.model` (hooks in `handle` already registered; removed here), then decode."""
    pre = prefill(
        lalm, parts, batch, handle, m, sync, keep=lambda c, g: StaticKV.from_prefill(c, g, max_new_tokens)
    )
    kv, valid, positions, first = pre.cache, pre.valid, pre.positions, pre.first
    t1 = time.perf_counter()
    with torch.inference_mode():
        state = start(parts, kv, valid, positions, first, batch["input_ids"], max_new_tokens=max_new_tokens,
                      min_new_tokens=min_new_tokens, eos_ids=lalm.eos_token_ids, pad_id=lalm.pad_token_id,
                      keep_logits=return_logits)  # fmt: skip
        runner = None
        # eager steps attend over the written columns only; a captured or compiled step keeps fixed shapes
        state.eager_views = not engine.compile and not (engine.cuda_graphs and kv.keys[0].is_cuda)
        if engine.compile:
            runner = _compiled(state)
        done_check = 0
        while state.host_step < max_new_tokens:
            done_check += 1
            if done_check >= engine.sync_every or state.host_step == 1:
                done_check = 0
                if all_done(state):
                    break
            if runner is None and engine.cuda_graphs and state.host_step == 1:
                from headrouter.engine.graphs import capture_step

                runner = capture_step(state)  # computes step 1 while warming up; replay recomputes it
            decode_step(state, runner)
        sync()
        t2 = time.perf_counter()
        tokens = state.out[:, : state.host_step].tolist()
        logits = None
        if return_logits:
            stacked = torch.stack(state.logits)  # [steps, B, V]
            logits = [stacked[:, b] for b in range(stacked.shape[1])]
    return CallResult(tokens, logits, pre.seconds, t2 - t1, pre.per_token, handle, kv.slots())


_COMPILED: list = []  # one torch.compile of step_once per process: calls of the same shapes reuse its graphs


def _compiled(state):
    """`step_once` of this state under torch.compile (a zero-argument runner). Dynamo guards on the shapes, so
    a call whose buffers have new shapes compiles again (after two shapes, once more with dynamic sizes)."""
    from headrouter.engine.loop import step_once

    if not _COMPILED:
        _COMPILED.append(torch.compile(step_once))
    fn = _COMPILED[0]
    return lambda: fn(state)


def _last_position_only(module, args):
    # only the last position's logits are read; without this the prefill computes [B, T, V] logits
    # (2 GiB per sample in bf16 at T = 7500, V = 151936)
    (hidden,) = args  # [B, T, D]
    return (hidden[:, -1:],) if hidden.shape[1] > 1 else None
