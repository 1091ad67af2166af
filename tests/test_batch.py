"""Batched generation: a batch of mixed lengths, prompts and stopping steps gives what each sample gives alone."""

from __future__ import annotations

import contextlib
import time

import pytest
import torch

from headrouter import PruneOptions, load_lalm
from headrouter.options import METHODS
from tests.test_engine import PROMPT, clip, tiny

# headrouter-learned needs calibrated profiles with a fitted router; tiny-synth's are tested in test_tiny_synth
BATCH_METHODS = [m for m in METHODS if m != "headrouter-learned"]
PROMPTS = [PROMPT, "what is the speaker talking about ?", "summarize", "describe the sound ."]


def _batch(lalm, longest: float | None = None):
    """A very short clip, two middling ones and one exactly at the model's window (or `longest` seconds)."""
    lengths = [0.12, 1.7, longest or lalm.window_s, 3.1]
    return [clip(s, seed=i) for i, s in enumerate(lengths)], PROMPTS


@contextlib.contextmanager
def _eos(lalm, token: int | None):
    """Make `token` the only end-of-sequence id (None: none) for the duration of the block."""
    saved = lalm.eos_token_ids, lalm.model.generation_config.eos_token_id
    lalm.eos_token_ids = frozenset() if token is None else frozenset({token})
    lalm.model.generation_config.eos_token_id = token
    try:
        yield
    finally:
        lalm.eos_token_ids, lalm.model.generation_config.eos_token_id = saved


def _stop_early(lalm, audios, prompts, steps):
    """An end-of-sequence id that makes the samples stop at different steps (the tiny-random models stop at
    once or never): a token that some sample produces part-way through when nothing stops it."""
    with _eos(lalm, None):
        free = [
            lalm.generate([a], [p], PruneOptions(method="vanilla"), max_new_tokens=steps)[0].token_ids
            for a, p in zip(audios, prompts)
        ]
    for row in free:
        for token in row[1:-1]:
            ends = {r.index(token) if token in r else steps for r in free}
            if len(ends) > 1:
                return token
    raise AssertionError(f"no token separates the samples' stopping steps: {free}")


def _same_as_alone(lalm, audios, prompts, opts, steps):
    cats = [("semantic", "acoustic")[i % 2] for i in range(len(audios))] if opts.routing == "oracle" else None
    batch = lalm.generate(audios, prompts, opts, max_new_tokens=steps, return_logits=True, categories=cats)
    for i, out in enumerate(batch):
        one = None if cats is None else [cats[i]]
        alone = lalm.generate(
            [audios[i]], [prompts[i]], opts, max_new_tokens=steps, return_logits=True, categories=one
        )[0]
        assert out.token_ids == alone.token_ids, (opts.method, i)
        assert out.kept_index == alone.kept_index, (opts.method, i)
        assert (out.audio_tokens, out.kept_tokens) == (alone.audio_tokens, alone.kept_tokens)
        assert out.logits.shape == alone.logits.shape == (len(out.token_ids), out.logits.shape[1])
        torch.testing.assert_close(out.logits, alone.logits, atol=1e-4, rtol=0)
        if alone.routing is not None:
            assert out.routing["alpha"] == pytest.approx(alone.routing["alpha"], abs=1e-5)
    return batch


@pytest.mark.parametrize(
    "alias,longest,methods",
    [
        ("tiny-random-qwen2-audio", None, BATCH_METHODS),  # its window: 30 s
        ("tiny-random", 12.0, BATCH_METHODS),
        ("tiny-random", None, ["vanilla", "headrouter", "fastv"]),  # its window: 300 s, 7,500 audio tokens
        # the 0.12-s clip is its own batch (Qwen3-Omni's encoder pads sub-second clips differently in a batch)
        ("tiny-random-qwen3-omni", 12.0, BATCH_METHODS),
    ],
)
def test_batch_equals_each_sample_alone_for_every_method(alias, longest, methods):
    lalm = tiny(alias)
    audios, prompts = _batch(lalm, longest)
    steps = 6
    stop = _stop_early(lalm, audios, prompts, steps)
    with _eos(lalm, stop):
        for method in methods:
            batch = _same_as_alone(
                lalm, audios, prompts, PruneOptions(method=method, retain=0.4, layer=2), steps
            )
            if method == "vanilla":
                assert (
                    len({len(o.token_ids) for o in batch}) > 1
                )  # the samples really stop at different steps
                assert any(o.token_ids[-1] == stop for o in batch)


@pytest.mark.slow
def test_tiny_synth_batch_equals_alone():
    lalm = load_lalm("tiny-synth")
    audios = [clip(0.3, 1), clip(4.0, 2), clip(9.5, 3)]
    prompts = ["transcribe the digits", "what is the sound ?", "how many beeps ?"]
    for method in ("vanilla", "headrouter", "fastv", "dart", "random"):
        _same_as_alone(lalm, audios, prompts, PruneOptions(method=method, retain=0.4, layer=2), 8)


def test_pruned_layers_cache_the_kept_tokens_plus_hidden_padding():
    lalm = tiny()
    audios, prompts = [clip(0.6, 0), clip(2.4, 1), clip(1.1, 2)], PROMPTS[:3]
    m = 2
    opts = PruneOptions(method="headrouter", retain=0.3, layer=m)
    inputs = lalm.prepare_batch(audios, prompts)
    t = inputs["input_ids"].shape[1]
    masks = []
    spy = lalm.layers[m].self_attn.register_forward_pre_hook(
        lambda mod, a, kw: masks.append(kw["attention_mask"]), with_kwargs=True
    )
    handle = lalm.prune_hooks(opts, lalm.check_options(opts))
    try:
        with torch.inference_mode():
            out = lalm.model(**inputs, use_cache=True)
            kept = [int(r.keep.numel()) for r in handle.records]
            k = max(kept)
            lengths = [layer.keys.shape[-2] for layer in out.cache.layers]
            assert lengths == [t] * m + [k] * (lalm.num_layers - m)
            assert [r.kept_tokens for r in handle.records] == [
                int(r.audio_tokens * 0.3) for r in handle.records
            ]
            mask = masks[0]  # [B, 1, K, K]: row b's first K - kept[b] columns are its padding
            assert mask.shape == (3, 1, k, k) and mask.dtype == torch.bool
            for b, n in enumerate(kept):
                assert not mask[b, 0, k - n :, : k - n].any()  # no real token sees the padding
                assert torch.equal(mask[b, 0, k - n :, k - n :], torch.ones(n, n, dtype=torch.bool).tril())
    finally:
        handle.remove()
    try:  # the same batch through generate: one decode step, whose mask hides the same padded columns
        lalm.generate(audios, prompts, opts, max_new_tokens=2, min_new_tokens=2)
        step = masks[-1]  # [B, 1, 1, K + 1]
        assert step.shape == (3, 1, 1, k + 1)
        for b, n in enumerate(kept):
            assert not step[b, 0, 0, : k - n].any() and step[b, 0, 0, k - n :].all()
    finally:
        spy.remove()


def test_batch_times_add_up_and_kv_bytes_are_per_sample():
    lalm = tiny()
    audios, prompts = [clip(0.8, 0), clip(2.0, 1)], PROMPTS[:2]
    opts = PruneOptions(method="frame", retain=0.5, layer=2)
    lalm.generate(audios, prompts, opts, max_new_tokens=3, min_new_tokens=3)  # warm-up
    start = time.perf_counter()
    batch = lalm.generate(audios, prompts, opts, max_new_tokens=3, min_new_tokens=3)
    wall = time.perf_counter() - start
    alone = [
        lalm.generate([a], [p], opts, max_new_tokens=3, min_new_tokens=3)[0] for a, p in zip(audios, prompts)
    ]
    for b, a in zip(batch, alone):
        assert (b.kv_bytes_full, b.kv_bytes_kept) == (a.kv_bytes_full, a.kv_bytes_kept)
        assert b.kv_bytes_kept < b.kv_bytes_full
        assert b.prefill_s > 0 and b.decode_s > 0
    # one prefill shared by input tokens, one decode loop by decode steps (both took 2 steps after the first token)
    tokens = [lalm.token_counts(a.size, p)[0] for a, p in zip(audios, prompts)]
    assert batch[1].prefill_s / batch[0].prefill_s == pytest.approx(tokens[1] / tokens[0], rel=1e-9)
    assert batch[0].decode_s == pytest.approx(batch[1].decode_s, rel=1e-9)
    # the shares add up to the call: never more than its wall time, and most of it (the rest is result building)
    total = sum(o.prefill_s + o.decode_s + o.prepare_s for o in batch)
    assert 0.5 * wall < total <= wall


def test_random_masks_differ_per_clip_and_repeat_per_seed():
    lalm = tiny()
    a, b = clip(1.5, 0), clip(1.5, 1)  # same length: same token layout, different content
    opts = PruneOptions(method="random", retain=0.5, layer=2, seed=7)
    first = lalm.generate([a, b], [PROMPT, PROMPT], opts, max_new_tokens=1)
    again = lalm.generate([b], [PROMPT], opts, max_new_tokens=1)[0]
    other_seed = lalm.generate([b], [PROMPT], PruneOptions(method="random", retain=0.5, layer=2, seed=8), 1)[
        0
    ]
    assert first[0].kept_index != first[1].kept_index
    assert again.kept_index == first[1].kept_index
    assert other_seed.kept_index != again.kept_index


def test_prefill_logits_of_a_batch_equal_each_alone():
    lalm = tiny("tiny-random-qwen2-audio")
    audios, prompts = _batch(lalm)
    for method in ("headrouter", "dart", "fastv"):
        opts = PruneOptions(method=method, retain=0.3, layer=1)
        logits, records = lalm.prefill_logits(audios, prompts, opts)
        assert logits.shape[0] == 4 and len(records) == 4
        for i in range(4):
            alone, rec = lalm.prefill_logits(audios[i], prompts[i], opts)
            assert torch.equal(rec.keep, records[i].keep)
            torch.testing.assert_close(logits[i], alone, atol=1e-4, rtol=0)


def test_phi4_batches_group_clip_lengths_so_padding_never_reaches_its_encoder():
    lalm = tiny("tiny-random-phi4mm")  # batch_group by length: its stock encoder is not padding-exact
    audios = [clip(0.5, 0), clip(1.7, 1), clip(0.5, 2), clip(2.3, 3)]
    prompts = PROMPTS
    assert lalm.batch_groups([len(a) for a in audios]) == [[0, 2], [1], [3]]
    for method in ("vanilla", "headrouter"):
        opts = PruneOptions(method=method, retain=0.5)
        logits, records = lalm.prefill_logits(audios, prompts, opts)
        for i in range(4):
            alone, rec = lalm.prefill_logits(audios[i], prompts[i], opts)
            torch.testing.assert_close(logits[i], alone, atol=1e-5, rtol=0)
            assert rec is None or torch.equal(rec.keep, records[i].keep)
