"""Calibration: answer NLL against the stock model, one trunk pass per sample == the per-ablation recomputation,
the ablation weight rule on hand-made deltas, settings recorded and checked, the learned router fitted and stored."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from headrouter import ProfileError, Profiles, PruneOptions, load_lalm
from headrouter.calibration import (
    CalibrateOptions,
    _fixed_router,
    ablation_weights,
    answer_nll,
    calibrate,
    pooled_bandwidth,
    trunk_pass,
)
from headrouter.engine.prompt import IM_END

PROMPT = "transcribe the digits"
ANSWER = "three one four"


@functools.cache
def synth():
    torch.set_num_threads(1)
    return load_lalm("tiny-synth")


def _clip(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * (300 + 90 * seed) * t) + 0.05 * rng.standard_normal(t.size)).astype(
        np.float32
    )


def _answer_ids(lalm, text=ANSWER):
    return [
        *lalm.tokenizer(text, add_special_tokens=False)["input_ids"],
        lalm.tokenizer.convert_tokens_to_ids(IM_END),
    ]


def _routers(heads: int, prefilter=2.0):
    return [_fixed_router(np.ones(heads), prefilter)] + [
        _fixed_router(np.where(np.arange(heads) == h, 0.0, 1.0), prefilter) for h in range(heads)
    ]


def _generate_nll(lalm, inputs, answer_ids, options, router) -> float:
    """The old calibration path: pruned prefill, then forced greedy decoding of the answer (one full pass)."""
    start = int(inputs["input_ids"].shape[1])
    handle = lalm.prune_hooks(options, router)
    try:
        with torch.inference_mode():
            out = lalm.model.generate(
                **inputs,
                max_new_tokens=len(answer_ids),
                do_sample=False,
                num_beams=1,
                prefix_allowed_tokens_fn=lambda _b, ids: [
                    answer_ids[min(ids.shape[-1] - start, len(answer_ids) - 1)]
                ],
                output_logits=True,
                return_dict_in_generate=True,
            )
    finally:
        handle.remove()
    logits = torch.stack(out.logits, dim=1)[0].float()  # [n, V]
    logp = torch.log_softmax(logits, -1)[torch.arange(len(answer_ids)), torch.tensor(answer_ids)]
    return float(-logp.mean())


def test_answer_nll_at_retain_one_is_the_stock_models_teacher_forced_nll():
    lalm = synth()
    inputs = lalm.prepare(_clip(2.5), PROMPT)
    ids = _answer_ids(lalm)
    options = PruneOptions(method="headrouter", retain=1.0, layer=2)
    trunk = trunk_pass(lalm, inputs, ids, options)
    (nll,) = answer_nll(lalm, trunk, _routers(lalm.num_heads)[:1], 1.0, 2)
    # by hand: one stock forward over prompt + answer, log-probabilities of each answer token at the position
    # before it (the last prompt position predicts the first answer token)
    full = {**inputs, "input_ids": torch.cat([inputs["input_ids"], torch.tensor([ids])], 1)}
    full["attention_mask"] = torch.ones_like(full["input_ids"])
    with torch.inference_mode():
        logits = lalm.model(**full).logits[0].float()  # [T + n, V]
    start = inputs["input_ids"].shape[1]
    logp = torch.log_softmax(logits[start - 1 : start - 1 + len(ids)], -1)  # [n, V]
    expected = -np.mean([float(logp[i, tok]) for i, tok in enumerate(ids)])
    assert nll == pytest.approx(expected, abs=1e-5)
    assert 0 < nll < 20


def test_one_trunk_pass_per_sample_equals_per_ablation_recomputation():
    lalm = synth()
    m = 2
    calls = {"early": 0, "late": 0}
    count = [
        lalm.layers[i].register_forward_hook(  # counts completed forwards
            lambda *_a, _k="early" if i < m else "late": calls.__setitem__(_k, calls[_k] + 1)
        )
        for i in (0, m - 1, m)
    ]
    inputs = lalm.prepare(_clip(3.0, seed=1), PROMPT)
    ids = _answer_ids(lalm)
    options = PruneOptions(method="headrouter", retain=0.4, layer=m)
    routers = _routers(lalm.num_heads)
    try:
        trunk = trunk_pass(lalm, inputs, ids, options)
        fast = answer_nll(lalm, trunk, routers, 0.4, m, batch=4)  # 9 ablations in batches of 4, 4, 1
        assert calls == {"early": 2, "late": 3}  # layers 0 and M-1 once each; layer M once per batch
    finally:
        for h in count:
            h.remove()
    slow = [_generate_nll(lalm, inputs, ids, options, r) for r in routers]
    np.testing.assert_allclose(fast, slow, atol=2e-5, rtol=0)
    assert np.ptp(slow) > 1e-3  # the ablations differ, so equality is not vacuous
    assert answer_nll(lalm, trunk, routers, 0.4, m) == pytest.approx(
        fast, abs=1e-5
    )  # batching changes nothing


def test_ablation_rule_pure_noise_is_near_uniform():
    rng = np.random.default_rng(0)
    deltas = 0.05 + 0.3 * rng.standard_normal((24, 8))  # no head matters; noise 10x larger than T
    w, info = ablation_weights(deltas, temperature=0.1, seed=0)
    assert w.sum() == pytest.approx(8.0)
    assert w.max() / w.min() < 1.5, w
    assert sum(s == 0 for s in info["shrunk"]) >= 6  # most heads are entirely within their noise
    # the rule's intermediate values: the mean effect; a bootstrap se near the textbook sigma / sqrt(S) of a
    # head's mean minus the mean over heads (sqrt(7/8) of one head's); the soft threshold never flips or grows
    # an effect; the weights are H * softmax(shrunk / T) of them
    assert info["ablation"] == pytest.approx(deltas.mean(0).tolist(), abs=1e-12)
    textbook = deltas.std(0, ddof=1) / np.sqrt(24) * np.sqrt(7 / 8)  # [H]
    assert np.array(info["se"]) == pytest.approx(textbook, rel=0.3)
    centered = deltas.mean(0) - deltas.mean(0).mean()
    shrunk = np.array(info["shrunk"])
    assert (np.abs(shrunk) <= np.abs(centered) + 1e-15).all() and (shrunk * centered >= 0).all()
    e = np.exp(shrunk / 0.1)
    assert w == pytest.approx(8 * e / e.sum(), abs=1e-12)


def test_ablation_rule_one_clearly_harmful_head_dominates_and_size_is_kept():
    rng = np.random.default_rng(1)
    deltas = 0.01 * rng.standard_normal((24, 8))
    deltas[:, 3] += 0.5  # removing head 3 costs 0.5 nats per token on every sample
    w, _ = ablation_weights(deltas, temperature=0.1, seed=0)
    assert int(np.argmax(w)) == 3 and w[3] > 0.8 * 8  # it carries most of the weight
    tiny = np.zeros((24, 8))
    tiny[:, 3] = 1e-6  # a consistent but negligible effect: no noise, yet almost no weight change
    w_tiny, _ = ablation_weights(tiny, temperature=0.1)
    assert np.abs(w_tiny - 1).max() < 1e-4
    assert np.allclose(ablation_weights(np.zeros((5, 4)))[0], 1.0)
    same_seed = ablation_weights(deltas, temperature=0.1, seed=0)[0]
    assert np.array_equal(w, same_seed)
    with pytest.raises(ValueError):
        ablation_weights(deltas, temperature=0.0)


def test_pooled_bandwidth():
    assert pooled_bandwidth([0.1, 0.3], [0.5, 0.5]) == pytest.approx(np.sqrt((0.01 + 0.0) / 2))
    assert pooled_bandwidth([0.2], [0.4]) == 1e-4


def _manifest(tmp_path, n_per_category=6):
    import json

    import soundfile as sf

    rows = []
    for i in range(2 * n_per_category):
        cat = ("semantic", "acoustic")[i % 2]
        path = tmp_path / f"{i}.wav"
        sf.write(path, _clip(1.0 + 0.5 * (i % 3), seed=i), 16000)
        prompt, answer = (PROMPT, ANSWER) if cat == "semantic" else ("which noise type is this", "white")
        rows.append({"audio": path.name, "id": str(i), "category": cat, "prompt": prompt, "answer": answer})
    manifest = tmp_path / "calib.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def test_calibrate_runs_layers_below_m_once_per_sample_records_settings_and_router(tmp_path, monkeypatch):
    lalm = synth()
    monkeypatch.setattr("headrouter.load_lalm", lambda *a, **k: lalm)
    early = []
    hook = lalm.layers[0].register_forward_hook(lambda *_: early.append(1))
    try:
        opts = CalibrateOptions(model="tiny-synth", manifest=str(_manifest(tmp_path)), out=str(tmp_path / "p.json"),
                                ablation_samples=2, routing_samples=3, router_samples=6)  # fmt: skip
        prof = calibrate(opts)
    finally:
        hook.remove()
    assert len(early) == 12  # 6 samples per category, one trunk pass each (ablation samples included)
    again = calibrate(CalibrateOptions(**{**opts.__dict__, "out": str(tmp_path / "q.json")}))
    assert (tmp_path / "p.json").read_bytes() == (tmp_path / "q.json").read_bytes()  # deterministic
    assert again == prof and again.router == prof.router
    loaded = Profiles.load(tmp_path / "p.json", num_heads=8)
    assert loaded.settings == {
        "layer": 2,
        "probe_input": "normed",
        "query_tokens": "after_audio",
        "prefilter": 2.0,
    }
    assert loaded.router is not None and loaded.router.info["samples_per_class"] == 6
    assert sum(loaded.semantic) == pytest.approx(8.0) and sum(loaded.acoustic) == pytest.approx(8.0)
    loaded.check_settings(layer=2, probe_input="normed", query_tokens="after_audio", prefilter=2.0)
    with pytest.raises(ProfileError, match=r"calibrated with layer=2 but this run uses layer=3"):
        loaded.check_settings(layer=3, probe_input="normed", query_tokens="after_audio", prefilter=2.0)
