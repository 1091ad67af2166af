"""Continuous batching: requests stream through S decode slots; a finished request hands its slot to the next.

`stream` pulls requests from an iterable into a queue, prefills a few of them at a time (one small padded batch
through the pruned prefill, each sample selected on its own, exactly as `LALM.generate` does), copies their KV
into free slots (`headrouter.engine.slots`) and decodes all slots together, yielding each request's result as
soon as its row finishes. Results come out in finishing order, each exactly once.

Refill rule: after each host check (every `EngineOptions.sync_every` steps), refill when at least
ceil(refill_fraction * S) slots are free (default 1/16: 4 of 64 slots, 1 of 8), or at once when no slot is
decoding (the queue would otherwise idle the device). Why small: a 300-s chunk's prefill (7,500 tokens) is
compute-bound on its own, so prefilling several at once buys little, while every step a free slot waits is lost
decode work (with a quarter of S, a freed slot waits on average for S/8 more rows to finish). A refill takes queued requests of the head
request's batch group (`LALM.batch_groups`) only.
Slot capacity: S rows, fixed per state; columns per layer group grow (rounded up to 64, the buffers copied,
the CUDA graph captured again) when a new request needs more than any before it (input or kept tokens + its
max_new_tokens). Out of memory while refilling puts the requests back at the head of the queue, halves S (the
most rows occupied at once; the buffers shrink to it once every slot is free) and tries again; one request that
does not fit alone is returned as an error, like `generate` of one clip.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch

from headrouter.engine import slots as sl
from headrouter.engine.loop import next_positions
from headrouter.options import PruneOptions

__all__ = ["Request", "StreamStats", "stream"]

log = logging.getLogger("headrouter")

_ROUND = 64  # slot capacity grows in steps of this many columns


@dataclass(frozen=True)
class Request:
    """One clip to answer: `key` comes back with its result; max_new_tokens (None: the stream's) and
    min_new_tokens are this request's own; category: for the oracle router (evaluation only)."""

    key: object
    audio: np.ndarray
    prompt: str
    max_new_tokens: int | None = None
    min_new_tokens: int = 0
    category: str | None = None


@dataclass
class StreamStats:
    """What one stream did: decode steps, rows that chose a token summed over steps (useful work), slots
    summed over steps (capacity), refills (prefills into free slots), out-of-memory shrinks, slot count."""

    steps: int = 0
    row_steps: int = 0
    slot_steps: int = 0
    refills: int = 0
    shrinks: int = 0
    slots: int = 0

    @property
    def occupancy(self) -> float:
        """Share of slot-steps that decoded a request's token (1.0: every slot busy at every step)."""
        return self.row_steps / self.slot_steps if self.slot_steps else 0.0


@dataclass
class _Queued:
    request: Request
    since: float  # perf_counter when it entered the queue
    alone: bool = False  # a refill with it failed: prefill it on its own to find the guilty request


@dataclass
class _Live:
    queued: _Queued
    result: object  # GenerationOutput without tokens yet
    queue_s: float
    decode_s: float = 0.0


def stream(lalm, requests: Iterable[Request], options: PruneOptions, *, slots: int, max_new_tokens: int,
           refill_fraction: float = 1 / 16, sample_rate: int | None = None,
           stats: StreamStats | None = None) -> Iterator[tuple[object, object]]:  # fmt: skip
    """(key, GenerationOutput) per request as it finishes, or (key, exception) for a request that fails on its
    own (a bad clip, or out of memory alone); see the module docstring."""
    if slots < 1:
        raise ValueError(f"slots must be >= 1, got {slots}")
    if not 0.0 < refill_fraction <= 1.0:
        raise ValueError(f"refill_fraction must be in (0, 1], got {refill_fraction}")
    parts = lalm.loop_parts()
    if parts is None or lalm.engine_options.loop != "owned":
        yield from _static(lalm, requests, options, slots, max_new_tokens, sample_rate)
        return
    run = _Stream(lalm, parts, options, slots, max_new_tokens, refill_fraction, sample_rate, stats)
    yield from run.events(iter(requests))


def _static(lalm, requests, options, slots, max_new_tokens, sample_rate):
    """A family the loop cannot serve (`LALM.loop_fallback`): `generate` on groups of `slots` requests."""
    batch: list[Request] = []
    for request in [*requests, None]:
        if request is not None:
            batch.append(request)
        if batch and (request is None or len(batch) == slots):
            outs = lalm.generate([r.audio for r in batch], [r.prompt for r in batch], options, max_new_tokens,
                                 sample_rate=sample_rate)  # fmt: skip
            yield from ((r.key, out) for r, out in zip(batch, outs))
            batch = []


class _Stream:
    def __init__(self, lalm, parts, options, slots, max_new, fraction, sample_rate, stats):
        self.lalm, self.parts, self.options = lalm, parts, options
        self.router = lalm.check_options(options)
        self.limit = slots  # most slots occupied at once (halved by out of memory)
        self.max_new, self.fraction, self.sample_rate = max_new, fraction, sample_rate
        self.stats = stats if stats is not None else StreamStats()
        self.stats.slots = slots
        self.queue: deque[_Queued] = deque()
        self.live: dict[int, _Live] = {}  # slot -> its request
        self.state: sl.SlotState | None = None
        self.runner = None
        m = options.layer
        self.group = [0 if i < m else 1 for i in range(len(parts.layers))]

    # ---- the loop ----------------------------------------------------------------------------------
    def events(self, source: Iterator[Request]):
        exhausted = False
        sync_every = self.lalm.engine_options.sync_every
        while True:
            while not exhausted and len(self.queue) < self.limit:  # keep S requests queued
                request = next(source, None)
                if request is None:
                    exhausted = True
                else:
                    self._check(request)
                    self.queue.append(_Queued(request, time.perf_counter()))
            free = self.limit - len(self.live)
            if self.queue and free > 0 and (not self.live or free >= math.ceil(self.fraction * self.limit)):
                yield from self._refill(free)
                if self.live:
                    yield from self._decode(0)  # rows that end at their first token free their slots at once
                continue  # a refill may have taken fewer than `free` requests (batch groups): look again
            if not self.live:
                if exhausted and not self.queue:
                    return
                continue
            yield from self._decode(sync_every)

    def _check(self, request: Request) -> None:
        new = request.max_new_tokens if request.max_new_tokens is not None else self.max_new
        if not 1 <= new <= self.max_new or request.min_new_tokens < 0:
            raise ValueError(
                f"request {request.key!r}: max_new_tokens must be in [1, {self.max_new}] and min_new_tokens "
                f">= 0, got {new} and {request.min_new_tokens}"
            )

    def _decode(self, steps: int):
        """`steps` decode steps for every slot, then one host check: finished rows are yielded and freed."""
        state, sync = self.state, self.lalm._sync
        before = state.step.clone()  # [S]
        t0 = time.perf_counter()
        with torch.inference_mode():
            for _ in range(steps):
                if self.runner is not None:
                    self.runner()
                else:
                    sl.step_once(state)
                sl.advance(state)
            sync()
        seconds = time.perf_counter() - t0
        done, step, before = torch.stack([state.done.long(), state.step, before]).tolist()  # one host read
        delta = [a - b for a, b in zip(step, before)]
        self.stats.steps += steps
        self.stats.slot_steps += steps * state.rows
        self.stats.row_steps += sum(delta)
        for slot, live in self.live.items():
            live.decode_s += seconds * delta[slot] / max(sum(delta), 1)
        for slot in [s for s in self.live if done[s]]:
            live = self.live.pop(slot)
            tokens = self.lalm._until_eos(state.out[slot, : step[slot]].tolist())
            text = self.lalm.tokenizer.decode(tokens, skip_special_tokens=True)
            result = replace(
                live.result, text=text, token_ids=tokens, decode_s=live.decode_s, queue_s=live.queue_s
            )
            yield live.queued.request.key, result
        if not self.live and self.state is not None and self.state.rows > self.limit:
            self.state = self.runner = None  # shrunk by out of memory: reallocate at the new size

    # ---- refills -----------------------------------------------------------------------------------
    def _take(self, free: int) -> list[_Queued]:
        """Up to `free` queued requests of the head request's batch group (the head alone if flagged)."""
        head = self.queue[0]
        if head.alone:
            return [self.queue.popleft()]
        key = self.lalm.adapter.batch_group(len(head.request.audio))
        picked = [
            q
            for q in self.queue
            if not q.alone and self.lalm.adapter.batch_group(len(q.request.audio)) == key
        ]
        picked = picked[:free]
        for q in picked:
            self.queue.remove(q)
        return picked

    def _refill(self, free: int):
        picked = self._take(free)
        try:
            yield from self._prefill(picked)
        except Exception as e:  # noqa: BLE001 - every request comes back or gets its own error
            if isinstance(e, torch.OutOfMemoryError):
                if torch.cuda.is_available() and torch.cuda.is_initialized():
                    torch.cuda.empty_cache()
                if len(picked) == 1 and not self.live and self.limit == 1:
                    yield picked[0].request.key, e
                    return
                self.limit = max(1, self.limit // 2)
                self.stats.shrinks += 1
                log.warning("out of memory refilling %d slots: at most %d slots now", len(picked), self.limit)
            elif len(picked) == 1:
                yield picked[0].request.key, e
                return
            else:
                log.warning(
                    "a refill of %d requests failed (%s): prefilling them one at a time", len(picked), e
                )
                for q in picked:
                    q.alone = True
            self.queue.extendleft(reversed(picked))

    def _prefill(self, picked: list[_Queued]):
        lalm, options = self.lalm, self.options
        requests = [q.request for q in picked]
        start = time.perf_counter()
        audios = [r.audio for r in requests]
        batch = lalm.prepare_batch(audios, [r.prompt for r in requests], self.sample_rate)
        from headrouter.engine.lalm import GenerationOutput, _sample_infos

        cats = [r.category for r in requests] if any(r.category is not None for r in requests) else None
        samples = _sample_infos(options, audios, cats)
        lengths = batch["attention_mask"].sum(dim=1).tolist()  # [R] input tokens
        prepare = time.perf_counter() - start
        gates, live = None, list(range(len(requests)))
        if options.skip_silence != "off":
            batch, gates, live = lalm._gate(batch, audios, options)
            samples = None if samples is None else [samples[i] for i in live]
        results, slot_of = {}, {}
        if live:
            outs, free = self._into_slots(batch, samples, [requests[i] for i in live])
            results, slot_of = dict(zip(live, outs)), dict(zip(live, free))
        self.stats.refills += 1
        for i, q in enumerate(picked):
            if i in results:
                out = results[i]
                if gates is not None:  # what the stock model would cache for the ungated prompt (as generate)
                    t = lengths[i] - gates[i].skipped_tokens
                    out = replace(out, kv_bytes_full=out.kv_bytes_full * lengths[i] // t)
            else:
                out = GenerationOutput("", [], 0, 0, None, 0, 0, 0.0, 0.0, silent=True)
            skipped = 0.0 if gates is None else gates[i].skipped_s
            out = replace(out, prepare_s=prepare * lengths[i] / sum(lengths), skipped_s=skipped)
            if i in results:
                self.live[slot_of[i]] = _Live(q, out, queue_s=start - q.since)
            else:
                yield q.request.key, replace(out, queue_s=start - q.since)

    def _into_slots(self, batch: dict, samples, requests: list[Request]) -> tuple[list, list[int]]:
        """Prefill `batch` and copy its rows into free slots: (results without tokens, the slot of each row)."""
        from headrouter.engine.owned import CallResult, prefill

        lalm, options = self.lalm, self.options
        handle = lalm.prune_hooks(options, self.router, samples)
        try:
            pre = prefill(lalm, self.parts, batch, handle, options.layer, lalm._sync)
        except BaseException:
            if handle is not None:  # prefill removes them too; a failure before it must not leave them on
                handle.remove()
            raise
        with torch.inference_mode():
            device = pre.first.device
            new = [r.max_new_tokens if r.max_new_tokens is not None else self.max_new for r in requests]
            max_new = torch.tensor(new, dtype=torch.long, device=device)  # [R]
            min_new = torch.tensor([r.min_new_tokens for r in requests], dtype=torch.long, device=device)
            valid = pre.valid if len(pre.valid) == 2 else [pre.valid[0], pre.valid[0]]
            need = [int((v.sum(dim=1) + max_new).max()) for v in valid]  # [2] columns per group
            self._make_room(need, pre.cache, pre.first.shape[-1], pre.positions)
            occupied = set(self.live)
            free = [s for s in range(self.state.rows) if s not in occupied][: len(requests)]
            lead, text_pos, rope_pos = next_positions(pre.positions)
            slots = torch.tensor(free, dtype=torch.long, device=device)  # [R]
            sl.fill(self.state, slots, pre.cache, pre.valid, text_pos, rope_pos, pre.first, batch["input_ids"],
                    max_new, min_new)  # fmt: skip
        call = CallResult([[] for _ in requests], None, pre.seconds, 0.0, pre.per_token, handle, 0)
        return lalm._results(batch, options, call), free

    def _make_room(self, need: list[int], cache, vocab: int, positions) -> None:
        """A state with at least `need` [2] columns per group and self.limit rows (grown by copy if occupied)."""
        state = self.state
        if state is not None and all(n <= c for n, c in zip(need, state.kv.capacity)):
            return
        old = [0, 0] if state is None else state.kv.capacity
        capacity = [max(o, _ROUND * math.ceil(n / _ROUND)) for o, n in zip(old, need)]
        like = [layer.keys for layer in cache.layers]  # [R, Hkv, W, d] per layer
        lead = tuple(positions.shape[:-2])
        rows = self.limit if state is None else state.rows
        fresh = sl.new_state(self.parts, self.group, rows, capacity, self.max_new, lead, like, vocab,
                             self.lalm.eos_token_ids, self.lalm.pad_token_id, positions.dtype)  # fmt: skip
        if state is not None and self.live:
            sl.copy_rows(state, fresh)
        self.state, self.runner = fresh, None
        if self.lalm.engine_options.cuda_graphs and fresh.tokens.device.type == "cuda":
            from headrouter.engine.graphs import capture

            self.runner = capture(lambda: sl.step_once(fresh), fresh.tokens.device)
