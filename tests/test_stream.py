"""Continuous batching (headrouter.engine.stream / slots): every request gets the tokens it gets alone from
`generate`, whatever slot it lands in and whichever requests share the slots; a slot's old KV never reaches its
new occupant; a refill that fails or runs out of memory loses and duplicates nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headrouter import PruneOptions
from headrouter.engine import slots as sl
from headrouter.engine.loop import EngineOptions
from headrouter.engine.stream import Request, StreamStats
from tests.families import FAMILIES
from tests.test_batch import BATCH_METHODS, PROMPTS, _eos
from tests.test_engine import clip, tiny

SECONDS = (0.7, 2.6, 1.3, 0.4, 1.9, 1.1, 0.9)
NEW = (3, 9, 5, 1, 7, 2, 6)  # per-request max_new_tokens: rows finish at different steps, slots refill
MAX_NEW = 10


def _requests(order=None, min_new=None):
    order = range(len(SECONDS)) if order is None else order
    return [
        Request(
            i,
            clip(SECONDS[i], seed=i),
            PROMPTS[i % 4],
            NEW[i],
            0 if min_new is None else min_new[i],
            category=("semantic", "acoustic")[i % 2],
        )  # fmt: skip  # the oracle router's input
        for i in order
    ]


def _alone(lalm, opts, requests):
    return {
        r.key: lalm.generate(
            [r.audio],
            [r.prompt],
            opts,
            r.max_new_tokens,
            min_new_tokens=r.min_new_tokens,
            categories=[r.category],
        )[0]  # fmt: skip
        for r in requests
    }


def _streamed(lalm, opts, requests, **kwargs):
    stats = StreamStats()
    got = list(lalm.stream(requests, opts, MAX_NEW, stats=stats, **kwargs))
    keys = [k for k, _ in got]
    assert sorted(keys, key=str) == sorted((r.key for r in requests), key=str), "every request exactly once"
    return dict(got), stats


def _same(got, alone, label):
    for key, one in alone.items():
        assert not isinstance(got[key], Exception), (label, key, got[key])
        assert got[key].token_ids == one.token_ids, (label, key)
        assert got[key].text == one.text
        assert got[key].kept_index == one.kept_index, (label, key)
        assert (got[key].audio_tokens, got[key].kept_tokens) == (one.audio_tokens, one.kept_tokens)


def test_stream_equals_alone_for_every_method_in_any_slot():
    lalm = tiny()
    with _eos(lalm, None):  # tiny-random ends at once: without an end the per-request lengths decide
        for method in BATCH_METHODS:
            opts = PruneOptions(method=method, retain=0.4, layer=2)
            requests = _requests()
            alone = _alone(lalm, opts, requests)
            assert [len(alone[i].token_ids) for i in range(len(NEW))] == list(NEW)
            got, stats = _streamed(lalm, opts, requests, slots=3)
            _same(got, alone, method)
            assert stats.refills >= 3 and 0 < stats.occupancy < 1
            if method in (
                "vanilla",
                "headrouter",
            ):  # other slots, other neighbours: reversed order, 2 and 5 slots
                for slots, order in ((2, reversed(range(len(NEW)))), (5, [3, 0, 6, 1, 5, 2, 4])):
                    got, _ = _streamed(
                        lalm, opts, _requests(list(order)), slots=slots, refill_fraction=1 / slots
                    )
                    _same(got, alone, (method, slots))


def test_per_request_min_new_tokens_and_end_of_sequence():
    """A request's own min_new_tokens (no end before it) with the model's end-of-sequence id on: what generate
    gives with the same min_new_tokens; a request without one ends at its first token (tiny-random)."""
    lalm = tiny()
    opts = PruneOptions(method="headrouter", retain=0.4, layer=2)
    requests = _requests(min_new=[n if i % 2 else 0 for i, n in enumerate(NEW)])
    alone = _alone(lalm, opts, requests)
    assert len({len(o.token_ids) for o in alone.values()}) > 2
    got, _ = _streamed(lalm, opts, requests, slots=3)
    _same(got, alone, "min_new")
    assert all(got[k].queue_s >= 0 and got[k].prefill_s > 0 for k in got)


@pytest.mark.parametrize("alias", FAMILIES)
def test_stream_equals_alone_for_every_family(alias):
    lalm = tiny(alias)
    requests = _requests()[:5]
    with _eos(lalm, None):
        for method in ("vanilla", "headrouter"):
            opts = PruneOptions(method=method, retain=0.4, layer=2)
            got, stats = _streamed(lalm, opts, requests, slots=2)
            _same(got, _alone(lalm, opts, requests), (alias, method))
            if lalm.loop_parts() is not None:
                assert stats.refills >= 2


def test_stock_loop_streams_through_generate():
    lalm = tiny()
    opts = PruneOptions(method="headrouter", retain=0.4, layer=2)
    requests = [Request(r.key, r.audio, r.prompt) for r in _requests()[:4]]  # one max_new for a static call
    with _eos(lalm, None):
        alone = {r.key: lalm.generate([r.audio], [r.prompt], opts, MAX_NEW)[0] for r in requests}
        lalm.engine_options = EngineOptions(loop="stock")
        try:
            got, stats = _streamed(lalm, opts, requests, slots=3)
        finally:
            lalm.engine_options = EngineOptions()
    _same(got, alone, "stock")
    assert stats.refills == 0


@pytest.mark.parametrize("masked", [True, False])
def test_old_kv_never_reaches_the_new_occupant(monkeypatch, masked):
    """Huge garbage in every column of a slot that its occupant has not written (the previous occupants' place,
    were the buffers not cleared) changes no token; with the slot mask opened the same garbage does (control)."""
    lalm = tiny()
    opts = PruneOptions(method="headrouter", retain=0.4, layer=2)
    fill = sl.fill

    def dirty_fill(state, slots, *args):
        fill(state, slots, *args)
        for i, k in enumerate(state.kv.keys):
            col = state.kv.column[state.kv.group[i]][slots]  # [R] first column the occupant has not written
            hidden = torch.arange(k.shape[-2])[None] >= col[:, None]  # [R, C_g]
            for buf in (k, state.kv.values[i]):
                rows = buf[slots]  # [R, Hkv, C_g, d]
                rows[hidden[:, None, :, None].expand_as(rows)] = 1e4
                buf[slots] = rows

    requests = _requests()
    with _eos(lalm, None):
        alone = _alone(lalm, opts, requests)
        monkeypatch.setattr(sl, "fill", dirty_fill)
        if not masked:
            monkeypatch.setattr(sl, "step_once", _unmasked_step)
        got, _ = _streamed(lalm, opts, requests, slots=3)
    if masked:
        _same(got, alone, "garbage")
    else:
        assert any(got[k].token_ids != alone[k].token_ids for k in alone), "the control must see the garbage"


def _unmasked_step(state):
    """slots.step_once with every key column visible (the mask a broken slot would have)."""
    for mask in state.visible:
        mask.fill_(0.0 if state.parts.additive_mask else True)
    logits = sl.layer_pass(state.parts, state.kv, state.visible, state.tokens, state.text_pos, state.rope_pos,
                           state.pos_layout)  # fmt: skip
    chosen = sl.pick(state, logits, state.step, state.min_new, state.done, state.seen)
    state.next_tokens.copy_(chosen)
    col = state.step.clamp(max=state.out.shape[1] - 1)[:, None]
    state.out.scatter_(1, col, torch.where(state.done[:, None], state.out.gather(1, col), chosen[:, None]))
    state.done_next.copy_(state.done | torch.isin(chosen, state.eos) | (state.step + 1 >= state.max_new))
    if state.seen is not None:
        state.seen.scatter_(1, chosen[:, None], True)


@pytest.mark.parametrize("where", ["prefill", "buffers"])
def test_refill_out_of_memory_shrinks_and_loses_nothing(monkeypatch, where):
    lalm = tiny()
    opts = PruneOptions(method="headrouter", retain=0.4, layer=2)
    requests = _requests()
    with _eos(lalm, None):
        alone = _alone(lalm, opts, requests)
        calls = []
        if where == "prefill":
            import headrouter.engine.owned as owned

            real, attr, module, fail_at = owned.prefill, "prefill", owned, 2
        else:
            real, attr, module, fail_at = sl.new_state, "new_state", sl, 1

        def flaky(*args, **kwargs):
            calls.append(1)
            if len(calls) == fail_at:  # the second refill's prefill / the first buffer allocation
                raise torch.OutOfMemoryError("fake: CUDA out of memory")
            return real(*args, **kwargs)

        monkeypatch.setattr(module, attr, flaky)
        got, stats = _streamed(lalm, opts, requests, slots=4, refill_fraction=0.5)
    _same(got, alone, where)
    assert stats.shrinks == 1 and len(calls) >= 2


def test_a_bad_clip_fails_alone_and_the_rest_stream_on():
    lalm = tiny()
    opts = PruneOptions(method="headrouter", retain=0.4, layer=2)
    requests = _requests()
    bad = Request("bad", np.full(8000, np.nan, dtype=np.float32), PROMPTS[0], 3)
    with _eos(lalm, None):
        alone = _alone(lalm, opts, requests)
        got, _ = _streamed(lalm, opts, [*requests[:2], bad, *requests[2:]], slots=3)
    assert isinstance(got.pop("bad"), Exception)
    _same(got, alone, "bad clip")


def test_worker_with_slots_writes_every_chunk_once_as_static_calls_do(monkeypatch):
    """InferenceWorker with --slots: one row per chunk, in order, the static calls' texts, queue_s filled; a
    stream that breaks part-way hands its unfinished chunks to the static calls (none lost or written twice);
    the actor's slot counters recorded."""
    import pyarrow as pa

    from pipeline.graph import SEGMENT_SCHEMA
    from tests.test_worker_batching import _segments, _worker

    rows = _segments([0.7, 2.6, 1.3, 0.4, 1.9])
    rows[3] = dict(rows[3], status="error", error="decode_error: bad")
    static = _worker()  # max_new_tokens 3
    with _eos(static.lalm, None):  # tiny-random ends at once: run every chunk to max_new_tokens
        want = static(pa.Table.from_pylist(rows, schema=SEGMENT_SCHEMA)).to_pylist()
    observed = []
    for broken in (False, True):
        worker = _worker(slots=2)
        worker._metrics.observe_slots = lambda labels, *counts: observed.append(counts)
        if broken:
            real = worker.lalm.stream

            def breaks(*args, real=real, **kwargs):
                for n, item in enumerate(real(*args, **kwargs)):
                    if n == 2:
                        raise RuntimeError("fake: the stream broke")
                    yield item

            monkeypatch.setattr(worker.lalm, "stream", breaks)
        with _eos(worker.lalm, None):
            got = worker(pa.Table.from_pylist(rows, schema=SEGMENT_SCHEMA)).to_pylist()
        assert [r["id"] for r in got] == [r["id"] for r in want]
        assert [(r["status"], r["text"]) for r in got] == [(r["status"], r["text"]) for r in want]
        assert all(r["text"] for r in want if r["status"] == "ok")
        done = [r for r in got if r["status"] == "ok"]
        if not broken:
            assert all(r["queue_s"] is not None and r["queue_s"] >= 0 for r in done)
    busy, slot_steps, refills = observed[0]
    assert 0 < busy <= slot_steps and refills >= 2


def test_bench_lengths_follow_the_issue_distribution():
    from bench.continuous import forced_lengths

    lengths = forced_lengths(2000, seed=0)
    assert lengths == forced_lengths(2000, seed=0) != forced_lengths(2000, seed=1)
    shares = [
        sum(lo <= n <= hi for n in lengths) / len(lengths) for lo, hi in ((20, 60), (300, 600), (800, 1000))
    ]
    assert sum(shares) == 1.0 and shares == pytest.approx([0.3, 0.5, 0.2], abs=0.03)


def test_stream_with_window_gating_equals_alone():
    """skip_silence='energy': empty windows removed before the encoder as in generate; a silent clip comes back
    at once (silent, no tokens), the others with the tokens and skipped seconds they get alone."""
    lalm = tiny()
    opts = PruneOptions(method="headrouter", retain=0.4, layer=2, skip_silence="energy")
    half_silent = clip(4.5, seed=1)
    half_silent[: 2 * 16000] = 0.0  # the first 2-s window empty
    audios = [half_silent, np.zeros(3 * 16000, dtype=np.float32), clip(1.5, seed=2), clip(2.5, seed=3)]
    requests = [Request(i, a, PROMPTS[i % 4], NEW[i + 1]) for i, a in enumerate(audios)]
    with _eos(lalm, None):
        alone = _alone(lalm, opts, requests)
        got, _ = _streamed(lalm, opts, requests, slots=2)
    _same(got, alone, "gated")
    assert got[1].silent and got[1].token_ids == [] and got[1].skipped_s == alone[1].skipped_s > 0
    assert got[0].skipped_s == alone[0].skipped_s > 0 and got[0].kv_bytes_full == alone[0].kv_bytes_full
