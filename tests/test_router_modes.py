"""Oracle and learned routing, profile settings (format version 2), version-1 files, the pre-filter at retain >= 0.5."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from headrouter import HeadRouter, ProfileError, Profiles, PruneOptions, keep_count
from headrouter.learned import LearnedRouter, fit_router, posterior_alpha

SETTINGS = settings(max_examples=60, deadline=None)
H = 4
RUN = {"layer": 2, "probe_input": "normed", "query_tokens": "after_audio", "prefilter": 2.0}


def _router(coef_scale=1.0, intercept=(0.0, 0.0)):
    coef = np.arange(2 * (H + 1), dtype=float).reshape(2, H + 1) * coef_scale
    return LearnedRouter(
        features=("selectivity", "spread"), mean=(0.1,) * (H + 1), scale=(0.05,) * (H + 1),
        coef=tuple(map(tuple, coef)), intercept=intercept,
    )  # fmt: skip


def _profiles(router=None, settings=None):
    return Profiles(
        semantic=[4, 1, 0.5, 0.1], acoustic=[0.2, 0.3, 3, 2], centers=(0.02, 0.06, 0.1), bandwidth=0.03,
        router=router, settings=settings,
    )  # fmt: skip


def _qk(seed=0, na=30):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(H, 3, 8, generator=gen) * 2, torch.randn(H, na, 8, generator=gen)


# ---- oracle ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("category", "index"), [("semantic", 0), ("acoustic", 2)])
def test_oracle_uses_exactly_the_category_profile(category, index):
    prof = _profiles()
    q, k = _qk()
    sel = HeadRouter(prof, routing="oracle").select(q, k, 0.3, category=category)
    expected = torch.tensor(prof.semantic if category == "semantic" else prof.acoustic)
    assert sel.alpha.tolist() == [float(i == index) for i in range(3)]
    torch.testing.assert_close(sel.head_weights, expected / expected.sum(), atol=1e-7, rtol=0)
    # the same keep as a router whose only profile is that category's
    only = Profiles(
        semantic=expected.tolist(), acoustic=expected.tolist(), centers=(0.0, 9.0, 0.0), bandwidth=1.0
    )
    assert torch.equal(sel.keep, HeadRouter(only, routing="hard").select(q, k, 0.3).keep)
    other = HeadRouter(prof, routing="oracle").select(
        q, k, 0.3, category=("acoustic", "x", "semantic")[index]
    )
    assert not torch.equal(other.head_weights, sel.head_weights)


def test_oracle_without_a_category_is_a_clear_error():
    q, k = _qk()
    for category in (None, "speech"):
        with pytest.raises(ValueError, match="oracle routing needs the sample's category"):
            HeadRouter(_profiles(), routing="oracle").select(q, k, 0.5, category=category)
    # the other routings ignore the category
    soft = HeadRouter(_profiles()).select(q, k, 0.5)
    assert torch.equal(HeadRouter(_profiles()).select(q, k, 0.5, category="semantic").keep, soft.keep)
    assert PruneOptions(method="headrouter-oracle").routing == "oracle"
    assert PruneOptions(method="headrouter-learned").routing == "learned"
    assert PruneOptions(method="headrouter-learned").router_prefilter == 2.0


# ---- learned --------------------------------------------------------------------------------------------------


def _alpha_by_hand(router: LearnedRouter, selectivity: np.ndarray, spread: float) -> np.ndarray:
    """The module docstring's rule written out: logistic posterior p, u = its entropy in bits, (p_sem, u, p_aco)."""
    x = np.concatenate([selectivity, [spread]])  # features ("selectivity", "spread"): [H + 1]
    logits = np.array(router.coef) @ ((x - np.array(router.mean)) / np.array(router.scale)) + router.intercept
    p = np.exp(logits - logits.max())
    p /= p.sum()
    u = -sum(v * np.log2(v) for v in p if v > 0)
    return np.array([(1 - u) * p[0], u, (1 - u) * p[1]])


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.floats(0.0, 5.0))
def test_prop_learned_alpha_sums_to_one_and_matches_posterior(seed, scale):
    q, k = _qk(seed)
    profiles = _profiles(router=_router(scale))
    sel = HeadRouter(profiles, routing="learned").select(q, k, 0.5)
    expected = _alpha_by_hand(profiles.router, sel.selectivity.double().numpy(), sel.spread)
    assert sel.alpha.double().numpy() == pytest.approx(expected, abs=1e-5)
    assert (sel.alpha >= 0).all() and sel.alpha.sum().item() == pytest.approx(1.0, abs=1e-6)
    # eq. 14 then 7 with this alpha: the profiles normalized, mixed, normalized again
    sem, aco = (np.array(w) / np.sum(w) for w in (profiles.semantic, profiles.acoustic))
    w = expected[0] * sem + expected[1] / H + expected[2] * aco
    assert sel.head_weights.double().numpy() == pytest.approx(w / w.sum(), abs=1e-5)


def test_posterior_alpha_by_hand():
    assert posterior_alpha([0.5, 0.5]).tolist() == [0.0, 1.0, 0.0]  # cannot tell: uniform heads
    assert posterior_alpha([1.0, 0.0]).tolist() == [1.0, 0.0, 0.0]  # sure: the category's profile
    p = 0.9
    u = -(p * np.log(p) + (1 - p) * np.log(1 - p)) / np.log(2)  # 0.469
    assert posterior_alpha([p, 1 - p]).numpy() == pytest.approx([(1 - u) * p, u, (1 - u) * (1 - p)], abs=1e-6)


def test_uninformative_classifier_gives_uniform_heads():
    q, k = _qk(3)
    flat = _router(coef_scale=0.0)  # all weights zero, equal intercepts: posterior (1/2, 1/2) for any input
    sel = HeadRouter(_profiles(router=flat), routing="learned").select(q, k, 0.5)
    assert sel.alpha.tolist() == [0.0, 1.0, 0.0]
    torch.testing.assert_close(sel.head_weights, torch.full((H,), 1 / H), atol=1e-7, rtol=0)
    norouter = HeadRouter(_profiles(), routing="none").select(q, k, 0.5)
    assert torch.equal(sel.keep, norouter.keep)


def _samples(seed, informative, n=30):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(2 * n):
        cat = ("semantic", "acoustic")[i % 2]
        sel = rng.uniform(0.0, 0.2, H)
        if informative:
            sel[0] += 0.3 if cat == "semantic" else 0.0
        out.append({"category": cat, "selectivity": torch.tensor(sel), "spread": float(sel.std()),
                    "num_audio": int(rng.integers(50, 500))})  # fmt: skip
    return out


def test_fit_is_deterministic_for_a_seed_and_learns_an_informative_signal():
    a, b = fit_router(_samples(0, True)), fit_router(_samples(0, True))
    assert a == b and a.info == b.info
    assert fit_router(_samples(1, True)) != a
    assert a.info["cv_accuracy"] > 0.95 and a.info["cv_log_loss"] < a.info["prior_log_loss"]
    semantic = a.alpha(torch.tensor([0.4, 0.1, 0.1, 0.1]), 0.13, 100)
    acoustic = a.alpha(torch.tensor([0.1, 0.1, 0.1, 0.1]), 0.0, 100)
    assert semantic[0] > 0.8 and acoustic[2] > 0.8


def test_fit_on_labels_unrelated_to_the_features_routes_to_uniform():
    router = fit_router(_samples(2, informative=False))
    alphas = torch.stack(
        [router.alpha(s["selectivity"], s["spread"], s["num_audio"]) for s in _samples(3, False)]
    )
    assert alphas[:, 1].mean() > 0.9  # the uniform profile gets almost all of alpha
    with pytest.raises(ValueError, match="needs >= 5 samples per category"):
        fit_router(_samples(0, True, n=3))


def test_learned_routing_needs_a_fitted_router():
    no_router = Profiles(semantic=[1] * 4, acoustic=[1] * 4, centers=(0, 1, 2), bandwidth=1.0)
    with pytest.raises(ValueError, match="routing='learned' needs profiles with a fitted router"):
        HeadRouter(no_router, routing="learned")
    q, k = _qk()
    uniform = HeadRouter(Profiles.uniform(H), routing="learned").select(q, k, 0.5)  # uncalibrated model
    assert uniform.alpha.tolist() == [0.0, 1.0, 0.0]
    with pytest.raises(ProfileError, match="router expects 5 features"):
        Profiles(semantic=[1] * 3, acoustic=[1] * 3, centers=(0, 1, 2), bandwidth=1.0, router=_router())


# ---- files and settings -----------------------------------------------------------------------------------------


def test_version_2_round_trip_keeps_router_and_settings(tmp_path):
    prof = _profiles(router=_router(0.5), settings=RUN)
    prof.save(tmp_path / "p.json")
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["version"] == 2 and data["settings"] == RUN and data["router"]["type"] == "logistic"
    loaded = Profiles.load(tmp_path / "p.json", num_heads=H)
    assert loaded == prof and loaded.router == prof.router and loaded.settings == RUN


def test_version_1_files_load_unchanged_and_accept_any_settings(tmp_path):
    v1 = {"format": "headrouter-profiles", "version": 1, "model_id": "m", "num_heads": H, "layer": 2,
          "semantic": [4, 1, 0.5, 0.1], "acoustic": [0.2, 0.3, 3, 2], "centers": [0.02, 0.06, 0.1],
          "bandwidth": 0.03, "calibration": {"method": "head-ablation"}}  # fmt: skip
    (tmp_path / "v1.json").write_text(json.dumps(v1))
    prof = Profiles.load(tmp_path / "v1.json", num_heads=H)
    assert (
        prof.semantic == (4.0, 1.0, 0.5, 0.1) and prof.centers == (0.02, 0.06, 0.1) and prof.bandwidth == 0.03
    )
    assert prof.settings is None and prof.router is None and prof.calibration == {"method": "head-ablation"}
    prof.check_settings(layer=5, probe_input="hidden", query_tokens="all_text", prefilter=None)
    q, k = _qk()
    assert torch.equal(
        HeadRouter(prof).select(q, k, 0.4).keep, HeadRouter(_profiles()).select(q, k, 0.4).keep
    )


def test_settings_mismatch_is_a_one_line_error_or_an_explicit_override(caplog):
    prof = _profiles(settings=RUN)
    prof.check_settings(**RUN)
    prof.check_settings(**{**RUN, "prefilter": 2})  # 2 == 2.0
    with pytest.raises(ProfileError) as err:
        prof.check_settings(**{**RUN, "probe_input": "hidden", "prefilter": None})
    msg = str(err.value)
    assert "\n" not in msg
    assert (
        "calibrated with probe_input='normed', prefilter=2.0 but this run uses probe_input='hidden', prefilter=None"
        in msg
    )
    with caplog.at_level(logging.WARNING, logger="headrouter"):
        prof.check_settings(**{**RUN, "layer": 3}, override=True)
    assert "layer=2" in caplog.text and "override" in caplog.text
    Profiles.uniform(4).check_settings(**{**RUN, "layer": 7})  # no recorded settings: nothing to check
    with pytest.raises(ProfileError, match="settings must be an object with exactly the keys"):
        _profiles(settings={"layer": 2})
    with pytest.raises(ProfileError, match="settings layer 3 disagrees with layer 2"):
        _profiles(settings={**RUN, "layer": 3})


# ---- the pre-filter at retain >= 0.5 ------------------------------------------------------------------------------


@SETTINGS
@given(st.integers(1, 3000), st.floats(0.5, 1.0))
def test_prop_default_prefilter_does_nothing_at_retain_half_or_more(na, retain):
    router = HeadRouter(Profiles.uniform(2), prefilter=PruneOptions().prefilter)
    k = keep_count(na, retain)
    assert router.candidates(na, k).numel() >= na - 1  # every token (or all but one) is a candidate
    if 2 * k >= na:
        assert router.candidates(na, k).tolist() == list(range(na))


def test_default_prefilter_acts_below_half():
    router = HeadRouter(Profiles.uniform(2), prefilter=2.0)
    assert router.candidates(100, keep_count(100, 0.4)).numel() == 80
    assert router.candidates(100, keep_count(100, 0.1)).numel() == 20


# ---- through the engine (tiny-synth: calibrated version-2 profiles with a fitted router) -------------------------


def test_engine_oracle_takes_each_samples_category_and_learned_routes(tmp_path):
    from headrouter import load_lalm

    torch.set_num_threads(1)
    lalm = load_lalm("tiny-synth")
    t = np.arange(40000) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 500 * t)).astype(np.float32)
    prompt = "which noise type is this"
    oracle = PruneOptions(method="headrouter-oracle", retain=0.3)
    out = lalm.generate([audio, audio], [prompt] * 2, oracle, 1, categories=["semantic", "acoustic"])
    assert [o.routing["alpha"] for o in out] == [(1.0, 0.0, 0.0), (0.0, 0.0, 1.0)]
    prof = lalm.profiles()
    for o, weights, name in zip(out, (prof.semantic, prof.acoustic), ("sem", "aco")):
        only = Profiles(semantic=weights, acoustic=weights, centers=(0.0, 9.0, 0.0), bandwidth=1.0,
                        settings=prof.settings)  # fmt: skip
        only.save(tmp_path / f"{name}.json")  # one path per file: the engine caches profiles by path
        ref = PruneOptions(method="headrouter-hard", retain=0.3, profiles=str(tmp_path / f"{name}.json"))
        assert lalm.generate([audio], [prompt], ref, 1)[0].kept_index == o.kept_index
    assert out[0].kept_index != out[1].kept_index  # the two profiles really select differently here
    with pytest.raises(ValueError, match="oracle routing needs the sample's category"):
        lalm.generate([audio], [prompt], oracle, 1)
    learned = lalm.generate([audio], [prompt], PruneOptions(method="headrouter-learned", retain=0.3), 1)[0]
    assert sum(learned.routing["alpha"]) == pytest.approx(1.0, abs=1e-6)
    # the profiles' fitted classifier on this sample's own routing statistics, not another rule's alpha
    r = learned.routing
    by_router = prof.router.alpha(torch.tensor(r["selectivity"]), r["spread"], learned.audio_tokens)
    assert r["alpha"] == pytest.approx(by_router.tolist(), abs=1e-6)
    soft = lalm.generate([audio], [prompt], PruneOptions(method="headrouter", retain=0.3), 1)[0].routing
    assert r["alpha"] != pytest.approx(soft["alpha"], abs=1e-3)  # the spread rule would route elsewhere
