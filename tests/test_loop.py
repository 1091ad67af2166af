"""The engine's own decode loop (headrouter.engine.loop / owned / static_cache) against transformers' generate with
the same pruning hooks (the previous engine, `EngineOptions(loop="stock")`): same tokens, step logits within 1e-4,
for every family and the pruning methods, in left-padded batches of mixed lengths whose rows stop at different
steps; the KV buffers, masks and slot count it allocates; the idempotent step a CUDA graph relies on."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from headrouter import PruneOptions, load_lalm
from headrouter.engine.loop import EngineOptions
from headrouter.options import METHODS
from tests.families import FAMILIES
from tests.test_batch import PROMPTS, _batch, _eos, _stop_early
from tests.test_engine import clip

SECONDS = (0.7, 3.1, 1.7)  # clips of different lengths: a left-padded batch
MAX_NEW = 10


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = load_lalm(name)
        return cache[name]

    return get


def _clips():
    return [clip(s, seed=i) for i, s in enumerate(SECONDS)]


def _run(lalm, loop: str, options, **kwargs):
    lalm.engine_options = EngineOptions(loop=loop)
    try:
        return lalm.generate(_clips(), PROMPTS[:3], options, MAX_NEW, **kwargs)
    finally:
        lalm.engine_options = EngineOptions()


def _stop_token(lalm, audios, prompts):
    """test_batch's end-of-sequence id that makes the rows stop at different steps, or None where the tiny model
    produces the same tokens for every input (tiny-random-voxtral)."""
    try:
        return _stop_early(lalm, audios, prompts, MAX_NEW)
    except AssertionError:
        return None


def _compare(lalm, methods):
    """Stock and owned loop on a left-padded batch of mixed lengths whose rows stop at different steps."""
    audios, prompts = _batch(lalm, min(12.0, lalm.window_s))
    stop = _stop_token(lalm, audios, prompts)
    with _eos(lalm, stop):
        for method in methods:
            opts = PruneOptions(method=method, retain=0.4)
            outs = {}
            for loop in ("stock", "owned"):
                lalm.engine_options = EngineOptions(loop=loop)
                try:
                    outs[loop] = lalm.generate(audios, prompts, opts, MAX_NEW, return_logits=True)
                finally:
                    lalm.engine_options = EngineOptions()
            lengths = [len(o.token_ids) for o in outs["owned"]]
            if stop is not None:
                assert len(set(lengths)) > 1, f"rows should stop at different steps, got {lengths}"
            for s, o in zip(outs["stock"], outs["owned"]):
                assert o.token_ids == s.token_ids, method
                assert o.logits.shape == s.logits.shape
                assert torch.allclose(o.logits, s.logits, atol=1e-4, rtol=0), (
                    method,
                    (o.logits - s.logits).abs().max(),
                )
                assert (o.kept_index, o.kv_bytes_kept) == (s.kept_index, s.kv_bytes_kept)
                if method != "vanilla":
                    assert o.kept_tokens < o.audio_tokens  # the gather/mask path, not the identity
    return stop


@pytest.mark.parametrize("family", FAMILIES)
def test_owned_loop_equals_generate(models, family):
    lalm = models(family)
    assert lalm.loop_parts() is not None, lalm.loop_fallback  # every supported family runs on the owned loop
    stop = _compare(lalm, ["vanilla", "headrouter", "fastv"])
    assert stop is not None or family == "tiny-random-voxtral"


def test_owned_loop_equals_generate_every_method(models):
    methods = [
        m
        for m in METHODS
        if m not in ("vanilla", "headrouter", "fastv", "headrouter-learned", "headrouter-oracle")
    ]
    assert _compare(models("tiny-random"), methods) is not None


def test_retain_one_runs_the_pruned_layout_and_equals_vanilla(models):
    """retain 1.0 with prune_audio_markers keeps every token through the hooks' layout: same tokens as vanilla."""
    lalm = models("tiny-random")
    vanilla = _run(lalm, "owned", PruneOptions(method="vanilla"), min_new_tokens=MAX_NEW)
    kept = _run(lalm, "owned", PruneOptions(method="headrouter", retain=1.0), min_new_tokens=MAX_NEW)
    assert [o.token_ids for o in kept] == [o.token_ids for o in vanilla]


def _capture_states(monkeypatch):
    """Record every DecodeState the owned loop starts (the real `start`, wrapped)."""
    import headrouter.engine.owned as owned

    states = []
    real = owned.start

    def spy(*args, **kwargs):
        states.append(real(*args, **kwargs))
        return states[-1]

    monkeypatch.setattr(owned, "start", spy)
    return states


def test_kv_buffers_hold_the_kept_tokens_and_masks_hide_the_rest(models, monkeypatch):
    lalm = models("tiny-random")
    states = _capture_states(monkeypatch)
    opts = PruneOptions(method="headrouter", retain=0.4)
    outs = lalm.generate(_clips(), PROMPTS[:3], opts, MAX_NEW, min_new_tokens=MAX_NEW)
    (state,) = states
    kv = state.kv
    lengths = [
        len(lalm.encode_prompt(p, o.audio_tokens)[0]) for p, o in zip(PROMPTS[:3], outs)
    ]  # input tokens
    kept = [n - o.audio_tokens + o.kept_tokens for n, o in zip(lengths, outs)]  # tokens layers >= M see
    m = opts.layer
    assert kv.group == [0] * m + [1] * (lalm.num_layers - m)
    assert kv.capacity() == [max(lengths) + MAX_NEW, max(kept) + MAX_NEW]
    steps = MAX_NEW - 1  # decode steps after the prefill's token
    for g, need in ((0, lengths), (1, kept)):
        visible = state.visible[g][:, 0, 0]  # [B, S_g] bool (SDPA)
        assert visible.dtype == torch.bool
        assert visible.sum(dim=1).tolist() == [n + steps for n in need]
        # a row's visible columns: its own prefill tokens (right-aligned) and then every decode step's column
        width = kv.prefill_len[g]
        for b, n in enumerate(need):
            expect = torch.zeros_like(visible[b])
            expect[width - n : width + steps] = True
            assert torch.equal(visible[b], expect)
        for i in (j for j in range(lalm.num_layers) if kv.group[j] == g):
            assert not kv.keys[i][:, :, width + steps :].any()  # nothing written past the last step


def test_masks_hide_what_the_buffers_hold_beyond_each_row(models, monkeypatch):
    """Garbage in every column a row must not see (its left padding, the columns not yet written) changes
    nothing: the masks hide them. Would fail if a buffer's stale or padding entries leaked into attention."""
    import headrouter.engine.owned as owned
    from headrouter.engine.static_cache import StaticKV

    lalm = models("tiny-random")
    opts = PruneOptions(method="headrouter", retain=0.4)
    clean = _run(lalm, "owned", opts, min_new_tokens=MAX_NEW, return_logits=True)
    real = StaticKV.from_prefill
    seen = []

    def dirty(cache, group, max_new_tokens):
        kv = real(cache, group, max_new_tokens)
        seen.append(kv)
        return kv

    real_start = owned.start

    def start(parts, kv, valid, *args, **kwargs):
        for i, (k, v) in enumerate(zip(kv.keys, kv.values)):
            rows = valid[kv.group[i]]  # [B, T_g] False on a row's padding
            hidden = torch.ones(k.shape[0], k.shape[2], dtype=torch.bool)  # [B, S_g]
            hidden[:, : rows.shape[1]] = ~rows
            for x in (k, v):
                x.masked_fill_(hidden[:, None, :, None], 1e4)
        return real_start(parts, kv, valid, *args, **kwargs)

    monkeypatch.setattr(StaticKV, "from_prefill", staticmethod(dirty))
    monkeypatch.setattr(owned, "start", start)
    noisy = _run(lalm, "owned", opts, min_new_tokens=MAX_NEW, return_logits=True)
    assert seen and any(len(set(kv.prefill_len)) > 1 for kv in seen)  # the pruned layout was filled
    for a, b in zip(clean, noisy):
        assert a.token_ids == b.token_ids
        torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=0)


def test_planner_count_equals_what_the_engine_allocates(models, monkeypatch):
    from headrouter.engine.owned import kv_slots

    lalm = models("tiny-random")
    states = _capture_states(monkeypatch)
    for opts in (PruneOptions(method="vanilla"), PruneOptions(method="headrouter", retain=0.4)):
        outs = lalm.generate(_clips(), PROMPTS[:3], opts, MAX_NEW, min_new_tokens=MAX_NEW)
        lengths = [len(lalm.encode_prompt(p, o.audio_tokens)[0]) for p, o in zip(PROMPTS[:3], outs)]
        kept = [n - o.audio_tokens + o.kept_tokens for n, o in zip(lengths, outs)]
        expect = kv_slots(len(outs), lalm.num_layers, opts.layer, max(lengths), max(kept), MAX_NEW)
        assert states[-1].kv.slots() == expect
        # the worker's planner asks the engine with this one function, from the counts it has before any compute
        counts = [lalm.token_counts(len(a), p) for a, p in zip(_clips(), PROMPTS[:3])]
        assert counts == [(n, o.audio_tokens) for n, o in zip(lengths, outs)]
        assert lalm.kv_tokens(counts, opts, MAX_NEW) == expect / lalm.num_layers


def test_step_is_idempotent_as_graph_replay_needs(models, monkeypatch):
    """A CUDA graph's warm-up computes the current step and the first replay computes it again: running the
    captured part twice per step must give the same tokens as once."""
    import headrouter.engine.graphs as graphs
    from headrouter.engine.loop import step_once

    lalm = models("tiny-random")
    opts = PruneOptions(method="headrouter", retain=0.4)
    once = _run(lalm, "owned", opts, min_new_tokens=MAX_NEW)

    def twice(state):
        return lambda: (step_once(state), step_once(state))

    monkeypatch.setattr(graphs, "capture_step", twice)
    again = _run(lalm, "owned", opts, min_new_tokens=MAX_NEW)
    assert [o.token_ids for o in again] == [o.token_ids for o in once]


def test_a_model_the_loop_cannot_serve_falls_back_and_says_why(models):
    lalm = load_lalm("tiny-random")
    lalm.model.generation_config.no_repeat_ngram_size = 2
    assert lalm.loop_parts() is None
    assert "no_repeat_ngram_size" in lalm.loop_fallback
    outs = lalm.generate(_clips()[:1], PROMPTS[:1], PruneOptions(method="vanilla"), 4, min_new_tokens=4)
    assert len(outs[0].token_ids) == 4


def test_suppressed_tokens_and_repetition_penalty_match_generate(models):
    lalm = load_lalm("tiny-random")
    gen = lalm.model.generation_config
    base = _run(lalm, "owned", PruneOptions(method="vanilla"), min_new_tokens=MAX_NEW)
    gen.repetition_penalty = 1.3
    gen.suppress_tokens = [base[0].token_ids[1]]
    lalm = replace_parts(lalm)
    assert lalm.loop_parts() is not None
    for method in ("vanilla", "headrouter"):
        opts = PruneOptions(method=method, retain=0.4)
        stock = _run(lalm, "stock", opts, min_new_tokens=MAX_NEW)
        owned = _run(lalm, "owned", opts, min_new_tokens=MAX_NEW)
        assert [o.token_ids for o in owned] == [o.token_ids for o in stock]
        assert all(gen.suppress_tokens[0] not in o.token_ids for o in owned)
    assert [o.token_ids for o in owned] != [o.token_ids for o in base]  # the processors changed something


def replace_parts(lalm):
    """Forget the cached loop parts (they read the generation config once)."""
    if hasattr(lalm, "_loop_parts"):
        del lalm._loop_parts
    return lalm


def test_engine_options_are_checked():
    with pytest.raises(ValueError, match="loop"):
        EngineOptions(loop="fast")
    with pytest.raises(ValueError, match="sync_every"):
        EngineOptions(sync_every=0)
    assert replace(EngineOptions(), cuda_graphs=False).loop == "owned"
