"""Engine on tiny random models: exactness at retain 1, pruning == masking, batches, cache layout, positions."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile

import numpy as np
import pytest
import torch

import headrouter.engine.hooks as hooks
from headrouter import PruneOptions, load_lalm
from headrouter.options import METHODS as ALL_METHODS
from tests.families import FAMILIES

# headrouter-oracle needs each sample's category (generate(..., categories=)): tests/test_router_modes.py
METHODS = tuple(m for m in ALL_METHODS if m != "headrouter-oracle")
PRUNING = [m for m in METHODS if m != "vanilla"]
PROMPT = "transcribe the audio ."


@functools.cache
def tiny(alias: str = "tiny-random", attn: str = "sdpa"):
    """Tiny model built into a private cache for this test process (shared by the engine/hooks test files)."""
    return load_lalm(alias, cache_dir=_cache_dir(), attn_implementation=attn)


@functools.cache
def _cache_dir() -> str:
    path = tempfile.mkdtemp(prefix="headrouter-test-")
    atexit.register(shutil.rmtree, path, True)
    return path


def clip(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    tone = 0.3 * np.sin(2 * np.pi * (220 + 80 * seed) * t)
    return (tone + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)


def audio_count(lalm, audio, prompt=PROMPT) -> int:
    """Audio placeholders the family's processor path gives this clip."""
    return int((lalm.prepare(audio, prompt)["input_ids"] == lalm.token_ids.audio).sum())


def text_rotary(lalm):
    """The text decoder's rotary embedding module."""
    text = getattr(lalm.model.model, "language_model", lalm.model.model)
    return text.rotary_emb


def position_arg(lalm, positions: torch.Tensor) -> torch.Tensor:
    """Position ids [n] as the text rotary takes them: [3, 1, n] for mRoPE (audio-only: equal rows), else [1, n]."""
    mrope = "mrope_section" in (lalm.adapter.text_config(lalm.model).rope_parameters or {})
    return positions.view(1, 1, -1).expand(3, 1, -1) if mrope else positions[None]


def masked_reference_logits(lalm, audio, prompt, layer: int, keep: torch.Tensor) -> torch.Tensor:
    """Unhooked model in which layers >= `layer` may attend only to `keep` (explicit 4-D mask), positions unchanged."""
    inputs = lalm.prepare(audio, prompt)
    t = inputs["input_ids"].shape[1]
    allowed = torch.zeros(t, dtype=torch.bool)
    allowed[keep] = True
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    mask = (causal & allowed[None, :])[None, None]  # [1, 1, T, T]

    def inject(module, args, kwargs):
        kwargs["attention_mask"] = mask
        return args, kwargs

    hooks = [
        lalm.layers[i].register_forward_pre_hook(inject, with_kwargs=True)
        for i in range(layer, lalm.num_layers)
    ]
    try:
        with torch.inference_mode():
            return lalm.model(**inputs, use_cache=True).logits[0, -1].float()
    finally:
        for h in hooks:
            h.remove()


@pytest.mark.parametrize("alias", FAMILIES)
def test_retain_one_is_exactly_the_stock_model(alias):
    lalm = tiny(alias)
    audio = clip(1.3)
    inputs = lalm.prepare(audio, PROMPT)
    with torch.inference_mode():
        stock = lalm.model(**inputs).logits[0, -1].float()  # no hooks at all
        stock_tokens = lalm.model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    stock_tokens = stock_tokens[0, inputs["input_ids"].shape[1] :].tolist()
    for method in PRUNING:  # vanilla is the stock model itself: comparing it would prove nothing
        opts = PruneOptions(method=method, retain=1.0, layer=2)
        logits, _ = lalm.prefill_logits(audio, PROMPT, opts)
        assert torch.equal(logits, stock), method
        out = lalm.generate([audio], [PROMPT], opts, max_new_tokens=4, min_new_tokens=4)[0]
        assert out.token_ids == stock_tokens, method
        assert out.kept_tokens == out.audio_tokens == audio_count(lalm, audio)
    # the same through the gather and mask code: with the "everything kept" shortcut off, layers >= M get every
    # position gathered and (in a padded batch) the kept-layout masks, and still compute the stock model
    other = clip(0.7, seed=1)
    with torch.inference_mode():
        stock_other = lalm.model(**lalm.prepare(other, PROMPT)).logits[0, -1].float()
    decide = hooks._Pruner._decide_batch
    taken = []

    def no_shortcut(self, layer_in, cache):
        decide(self, layer_in, cache)
        taken.append(self.identity)
        self.identity = False

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hooks._Pruner, "_decide_batch", no_shortcut)
        opts = PruneOptions(method="headrouter", retain=1.0, layer=2)
        logits, _ = lalm.prefill_logits([audio, other], [PROMPT, PROMPT], opts)
        outs = lalm.generate([audio, other], [PROMPT, PROMPT], opts, max_new_tokens=4, min_new_tokens=4)
    assert taken and all(taken)  # the shortcut would have been taken: this exercised the path it skips
    torch.testing.assert_close(logits, torch.stack([stock, stock_other]), atol=1e-5, rtol=0)
    assert outs[0].token_ids == stock_tokens
    # 1.3 s: 130 mel frames -> 32 tokens (Qwen); 128 frames -> 16 (Phi-4); one 30-s chunk -> 375 (Voxtral);
    # 130 frames -> 13 + 4 (Qwen3-Omni: 13 per 100-frame chunk, the 30-frame tail by three halvings)
    expected = {"tiny-random-phi4mm": 16, "tiny-random-voxtral": 375, "tiny-random-qwen3-omni": 17}
    assert audio_count(lalm, audio) == expected.get(alias, 32)


@pytest.mark.parametrize("alias", FAMILIES)
@pytest.mark.parametrize("method", PRUNING)
def test_pruning_equals_masking_pruned_tokens(alias, method):
    lalm = tiny(alias)
    audio = clip(2.0, seed=1)
    for layer, retain in ((2, 0.4), (1, 0.25), (3, 0.7)):
        opts = PruneOptions(method=method, retain=retain, layer=layer)
        logits, record = lalm.prefill_logits(audio, PROMPT, opts)
        assert record.kept_tokens == int(record.audio_tokens * retain) < record.audio_tokens
        ref = masked_reference_logits(lalm, audio, PROMPT, layer, record.keep)
        torch.testing.assert_close(logits, ref, atol=1e-4, rtol=0)
        # and pruning really changes the result (the comparison is not vacuous)
        vanilla, _ = lalm.prefill_logits(audio, PROMPT)
        assert (vanilla - logits).abs().max() > 1e-4


@pytest.mark.parametrize(
    "extra",
    [
        {"prune_audio_markers": True},
        {"query_tokens": "all_text"},
        {"probe_input": "hidden"},
        {"prefilter": 1.5},
    ],
)
def test_open_choices_are_still_exact_pruning(extra):
    lalm = tiny()
    audio = clip(1.6, seed=2)
    opts = PruneOptions(method="headrouter", retain=0.5, layer=2, **extra)
    logits, record = lalm.prefill_logits(audio, PROMPT, opts)
    ref = masked_reference_logits(lalm, audio, PROMPT, 2, record.keep)
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=0)
    markers = extra.get("prune_audio_markers", False)
    assert record.audio_tokens == 40 + (2 if markers else 0)
    assert record.kept_tokens == record.audio_tokens // 2


@pytest.mark.parametrize("alias", FAMILIES)
def test_batch_of_four_equals_each_sample_alone_for_every_method(alias):
    lalm = tiny(alias)
    audios = [clip(0.5, 0), clip(1.7, 1), clip(1.0, 2), clip(2.3, 3)]
    prompts = [PROMPT, "what is the speaker talking about ?", "summarize", PROMPT]
    counts = [audio_count(lalm, a, p) for a, p in zip(audios, prompts)]
    if alias in ("tiny-random", "tiny-random-qwen2-audio"):
        assert counts == [12, 42, 25, 57]
    for method in METHODS:
        opts = PruneOptions(method=method, retain=0.5, layer=2, seed=3)
        batch = lalm.generate(audios, prompts, opts, max_new_tokens=3, min_new_tokens=3)
        assert [o.audio_tokens for o in batch] == counts
        for i, out in enumerate(batch):
            assert len(out.token_ids) == 3, method
            assert out.kept_tokens == (out.audio_tokens if method == "vanilla" else out.audio_tokens // 2)
            if method in ("headrouter", "dart", "random"):
                alone = lalm.generate([audios[i]], [prompts[i]], opts, max_new_tokens=3, min_new_tokens=3)[0]
                assert (alone.token_ids, alone.kept_index) == (out.token_ids, out.kept_index)
                if alias == "tiny-random-qwen3-omni" and alone.routing is not None:
                    # its batched encoder convolutions and masked SDPA round differently from a lone clip's
                    # (hidden states ~1e-8 apart; the MoE rows are exact): routing equal up to float noise
                    assert out.routing["alpha"] == pytest.approx(alone.routing["alpha"], rel=0, abs=1e-6)
                    assert out.routing["spread"] == pytest.approx(alone.routing["spread"], rel=0, abs=1e-6)
                else:
                    assert alone.routing == out.routing
    routed = lalm.generate(audios, prompts, PruneOptions(retain=0.5), max_new_tokens=1)
    assert all(o.routing is not None and abs(sum(o.routing["alpha"]) - 1) < 1e-5 for o in routed)
    if alias != "tiny-random-voxtral":  # Voxtral: each clip is mostly the same zero padding of its 30-s chunk
        assert len({o.routing["spread"] for o in routed}) == 4  # each sample routed on its own statistics


@pytest.mark.parametrize("alias", FAMILIES)
def test_cache_layout_positions_and_kv_bytes(alias):
    lalm = tiny(alias)
    audio = clip(1.2, seed=4)
    layer = 2
    opts = PruneOptions(method="headrouter", retain=0.4, layer=layer)
    inputs = lalm.prepare(audio, PROMPT)
    t = inputs["input_ids"].shape[1]
    seen = []

    def spy(module, args, kwargs):
        cos, _ = kwargs["position_embeddings"]  # [1, T_layer, d]
        seen.append(cos[0].clone())

    spy_handle = lalm.layers[layer].self_attn.register_forward_pre_hook(spy, with_kwargs=True)
    handle = lalm.prune_hooks(opts, lalm.check_options(opts))
    try:
        with torch.inference_mode():
            out = lalm.model(**inputs, use_cache=True)
            cache = out.cache
            keep = handle.record.keep
            lengths = [layer_cache.keys.shape[-2] for layer_cache in cache.layers]
            assert lengths[:layer] == [t] * layer
            assert lengths[layer:] == [keep.numel()] * (lalm.num_layers - layer)
            assert keep.numel() == t - handle.record.audio_tokens + handle.record.kept_tokens
            # one decode step through the same cache: the new token sits at original position t
            nxt = out.logits[0, -1].argmax().view(1, 1)
            step = {"input_ids": nxt, "cache": cache}  # positions from the cache length (layer 0: t)
            lalm.model(**step, use_cache=True)
            assert cache.layers[layer].keys.shape[-2] == keep.numel() + 1
            assert cache.layers[0].keys.shape[-2] == t + 1
    finally:
        handle.remove()
        spy_handle.remove()
    # kept tokens carry their original position ids: audio-only inputs use 1-D positions 0..T-1
    x = torch.zeros(1, 1, dtype=lalm.dtype)
    cos_full, _ = text_rotary(lalm)(x, position_arg(lalm, torch.arange(t + 1)))  # [1, T+1, d]
    torch.testing.assert_close(seen[0], cos_full[0, keep], atol=0, rtol=0)
    torch.testing.assert_close(seen[1], cos_full[0, t : t + 1], atol=0, rtol=0)

    vanilla = lalm.generate([audio], [PROMPT], PruneOptions(method="vanilla"), max_new_tokens=1)[0]
    pruned = lalm.generate([audio], [PROMPT], opts, max_new_tokens=1)[0]
    assert vanilla.kv_bytes_kept == vanilla.kv_bytes_full == pruned.kv_bytes_full
    per_token_layer = vanilla.kv_bytes_full // (t * lalm.num_layers)
    expected = per_token_layer * (layer * t + (lalm.num_layers - layer) * keep.numel())
    assert pruned.kv_bytes_kept == expected < pruned.kv_bytes_full
    assert pruned.prefill_s > 0 and pruned.decode_s == 0.0  # one token: the prefill made it, nothing decoded
    timed = lalm.generate([audio], [PROMPT], opts, max_new_tokens=3, min_new_tokens=3)[0]
    assert len(timed.token_ids) == 3 and timed.prefill_s > 0 and timed.decode_s > 0


@pytest.mark.parametrize("alias", FAMILIES)
def test_generation_runs_to_max_new_tokens_with_eager_masks(alias):
    """Eager attention materializes [B, 1, q, kv] masks sized from layer 0: they must be sliced at prefill
    and at decode for layers >= M, and give what SDPA (no mask) gives."""
    eager, sdpa = tiny(alias, "eager"), tiny(alias)
    audio = clip(1.5, seed=5)
    for method in ("headrouter", "fastv", "frame"):
        opts = PruneOptions(method=method, retain=0.3, layer=1)
        le, re = eager.prefill_logits(audio, PROMPT, opts)
        ls, rs = sdpa.prefill_logits(audio, PROMPT, opts)
        assert torch.equal(re.keep, rs.keep)
        torch.testing.assert_close(le, ls, atol=1e-5, rtol=0)
        oe = eager.generate([audio], [PROMPT], opts, max_new_tokens=6, min_new_tokens=6)[0]
        os_ = sdpa.generate([audio], [PROMPT], opts, max_new_tokens=6, min_new_tokens=6)[0]
        assert oe.token_ids == os_.token_ids and len(oe.token_ids) == 6
