"""HeadRouter math (eqs. 4-17) against hand-worked values, plus the invariants the paper relies on."""

import math
from decimal import Decimal
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from headrouter import HeadRouter, ProfileError, Profiles, Selection, keep_count
from headrouter.routing import (
    SPREAD_ROUTINGS,
    mix_head_weights,
    probe_distribution,
    routing_alpha,
    selectivity,
    selectivity_spread,
    token_importance,
    topk_keep,
)

SETTINGS = settings(max_examples=60, deadline=None)
LN = math.log


def _entropy(p):
    return -sum(x * LN(x) for x in p if x > 0)


def _gauss_alpha(spread, centers, bandwidth):
    kern = [math.exp(-((spread - mu) ** 2) / (2 * bandwidth**2)) for mu in centers]
    return [v / sum(kern) for v in kern]


def _probe_inputs(logits_per_head):
    """q [H, 1, 1] = 1 and k [H, Na, 1] = logits: the probe row of head h is softmax(logits_h)."""
    k = torch.tensor(logits_per_head, dtype=torch.float32).unsqueeze(-1)  # [H, Na, 1]
    q = torch.ones(k.shape[0], 1, 1)  # [H, 1, 1]
    return q, k


# ---- eq. 4: keep count --------------------------------------------------------------------------------------


def test_keep_count_has_no_float_drift():
    assert 0.29 * 100 < 29 and 0.57 * 100 < 57  # the trap: naive floor gives 28 and 56
    assert keep_count(100, 0.29) == 29
    assert keep_count(100, 0.57) == 57
    assert [keep_count(100, i / 100) for i in range(101)] == list(range(101))
    assert keep_count(1000, 0.001) == 1
    assert keep_count(7, 0.5) == 3  # floor, not round
    assert keep_count(100, Decimal("0.29")) == 29 and keep_count(3, Fraction(2, 3)) == 2


def test_keep_count_edges_and_errors():
    assert (
        keep_count(0, 0.5) == 0
        and keep_count(10, 0) == 0
        and keep_count(10, 1) == 10
        and keep_count(10, 1.0) == 10
    )
    for bad in (-0.01, 1.01, float("nan"), float("inf"), True, "0.5", None):
        with pytest.raises(ValueError):
            keep_count(10, bad)
    with pytest.raises(ValueError):
        keep_count(-1, 0.5)


# ---- eqs. 15-17: probe ---------------------------------------------------------------------------------------


def test_probe_eq17_hand_worked():
    # H=2, Nt=2, Na=3, d=4 (sqrt(d) = 2). Head 0: text token 0 scores (2*1/2, 0, 0) = (1, 0, 0); text token 1 is a
    # zero query -> uniform. Head 1: both queries zero -> uniform.
    q = torch.zeros(2, 2, 4)
    q[0, 0, 0] = 2.0
    k = torch.zeros(2, 3, 4)
    k[:, 0, 0] = 1.0
    e = math.e
    row0 = [e / (e + 2), 1 / (e + 2), 1 / (e + 2)]
    expected = [[(row0[i] + 1 / 3) / 2 for i in range(3)], [1 / 3] * 3]
    p = probe_distribution(q, k)
    assert p.shape == (2, 3) and p.dtype == torch.float32
    assert torch.allclose(p, torch.tensor(expected), atol=1e-6)
    assert torch.allclose(p.sum(-1), torch.ones(2))


def test_probe_scales_by_sqrt_d():
    # same dot product 4 with d=4 vs d=16 must give logits 2 vs 1
    for d, logit in ((4, 2.0), (16, 1.0)):
        q = torch.zeros(1, 1, d)
        q[0, 0, 0] = 2.0
        k = torch.zeros(1, 2, d)
        k[0, 0, 0] = 2.0
        p = probe_distribution(q, k)
        assert p[0, 0].item() == pytest.approx(math.exp(logit) / (math.exp(logit) + 1), abs=1e-6)


def test_probe_is_stable_for_huge_logits():
    q, k = _probe_inputs([[1e4, 0.0, -1e4]])
    p = probe_distribution(q, k)
    assert torch.isfinite(p).all() and p[0].tolist() == pytest.approx([1.0, 0.0, 0.0])


# ---- eqs. 10-11: selectivity and spread -----------------------------------------------------------------------


def test_selectivity_eq10_hand_worked():
    probe = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.7, 0.2, 0.1]])
    expected = [1 - LN(2) / LN(3), 1.0, 0.0, 1 - _entropy([0.7, 0.2, 0.1]) / LN(3)]
    assert selectivity(probe).tolist() == pytest.approx(expected, abs=1e-6)


def test_selectivity_single_audio_token_is_one():
    assert selectivity(torch.ones(3, 1)).tolist() == [1.0, 1.0, 1.0]


def test_spread_eq11_is_population_std():
    assert selectivity_spread(torch.tensor([0.2, 0.6])) == pytest.approx(0.2)  # sample std would be 0.283
    assert selectivity_spread(torch.tensor([0.0, 0.5, 1.0])) == pytest.approx(math.sqrt(1 / 6))
    assert selectivity_spread(torch.tensor([0.4])) == 0.0


# ---- eq. 13: routing coefficients -----------------------------------------------------------------------------


def test_alpha_eq13_hand_worked():
    # logits -(0.1)^2/0.02 = -0.5, 0, -(0.2)^2/0.02 = -2
    alpha = routing_alpha(0.1, (0.0, 0.1, 0.3), 0.1)
    z = math.exp(-0.5) + 1 + math.exp(-2)
    assert alpha.dtype == torch.float32
    assert alpha.tolist() == pytest.approx([math.exp(-0.5) / z, 1 / z, math.exp(-2) / z], abs=1e-7)


def test_alpha_far_spread_is_nan_free():
    # every kernel underflows in linear space: exp(-125000) / (0 + 0 + 0)
    alpha = routing_alpha(0.5, (0.0, 0.01, 0.02), 1e-3)
    assert torch.isfinite(alpha).all() and alpha.tolist() == pytest.approx([0.0, 0.0, 1.0])
    alpha = routing_alpha(0.3, (10.0, 20.0, 30.0), 0.01)
    assert torch.isfinite(alpha).all() and alpha.tolist() == pytest.approx([1.0, 0.0, 0.0])
    # so small a bandwidth that even the log-kernel overflows: the sigma -> 0 limit (nearest center)
    alpha = routing_alpha(0.19, (0.0, 0.1, 0.2), 1e-200)
    assert alpha.tolist() == [0.0, 0.0, 1.0]


def test_alpha_hard_and_none():
    centers = (0.05, 0.1, 0.2)
    assert routing_alpha(0.0, centers, 0.05, "hard").tolist() == [1.0, 0.0, 0.0]
    assert routing_alpha(0.076, centers, 0.05, "hard").tolist() == [0.0, 1.0, 0.0]
    assert routing_alpha(0.9, centers, 0.05, "hard").tolist() == [0.0, 0.0, 1.0]
    assert routing_alpha(0.15, (0.1, 0.15, 0.15), 0.05, "hard").tolist() == [0.0, 1.0, 0.0]  # tie -> lower
    assert routing_alpha(0.3, centers, 0.05, "none").tolist() == [0.0, 1.0, 0.0]
    with pytest.raises(ValueError):
        routing_alpha(0.1, centers, 0.05, "gumbel")


# ---- eqs. 14, 7, 8: head weights and importance ---------------------------------------------------------------


def test_head_weights_eq14_eq7_hand_worked():
    # sem (3, 1) -> (0.75, 0.25); aco (0, 2) -> (0, 1); uni (0.5, 0.5)
    alpha = torch.tensor([0.2, 0.3, 0.5])
    w = mix_head_weights(alpha, torch.tensor([3.0, 1.0]), torch.tensor([0.0, 2.0]))
    assert w.tolist() == pytest.approx([0.2 * 0.75 + 0.3 * 0.5, 0.2 * 0.25 + 0.3 * 0.5 + 0.5 * 1.0])
    # profiles are normalized before mixing: scaling one must not change w*
    w_scaled = mix_head_weights(alpha, torch.tensor([300.0, 100.0]), torch.tensor([0.0, 2.0]))
    assert torch.allclose(w, w_scaled)


def test_importance_eq8_hand_worked():
    w = torch.tensor([0.3, 0.7])
    probe = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    assert token_importance(w, probe).tolist() == pytest.approx([0.29, 0.36, 0.35])


# ---- eq. 5: top-k ---------------------------------------------------------------------------------------------


def test_topk_keep_ties_toward_lower_index():
    assert topk_keep(torch.tensor([1.0, 3.0, 3.0, 2.0]), 1).tolist() == [1]
    assert topk_keep(torch.tensor([1.0, 3.0, 3.0, 2.0]), 3).tolist() == [1, 2, 3]
    assert topk_keep(torch.full((6,), 0.5), 3).tolist() == [0, 1, 2]
    assert topk_keep(torch.tensor([2.0, 1.0, 2.0, 1.0, 2.0]), 2).tolist() == [0, 2]
    many = torch.zeros(20000)
    many[::3] = 1.0  # large enough that an unstable sort (or torch.topk) scrambles the tied order
    assert topk_keep(many, 10).tolist() == list(range(0, 30, 3))
    assert topk_keep(many, 6668).tolist() == sorted([*range(0, 20000, 3), 1])  # all 6667 ones, then index 1
    assert topk_keep(torch.tensor([1.0, 2.0]), 0).dtype == torch.long
    assert topk_keep(torch.tensor([1.0, 2.0]), 0).numel() == 0
    with pytest.raises(ValueError):
        topk_keep(torch.tensor([1.0, float("nan")]), 1)
    with pytest.raises(ValueError):
        topk_keep(torch.tensor([1.0, 2.0]), 3)


# ---- the whole router -----------------------------------------------------------------------------------------


def test_select_end_to_end_hand_worked():
    # Head 0 sees logits (ln 4, ln 2, 0) -> p = (4, 2, 1)/7; head 1 a zero query -> uniform.
    q = torch.tensor([[[1.0]], [[0.0]]])  # [2, 1, 1]
    k = torch.tensor([[[LN(4)], [LN(2)], [0.0]], [[1.0], [2.0], [3.0]]])  # [2, 3, 1]
    profiles = Profiles(semantic=[1.0, 0.0], acoustic=[0.0, 5.0], centers=(0.0, 0.1, 0.2), bandwidth=0.1)
    sel = HeadRouter(profiles).select(q, k, retain=0.67)  # floor(3 * 0.67) = 2

    p0 = [4 / 7, 2 / 7, 1 / 7]
    s0 = 1 - _entropy(p0) / LN(3)
    spread = s0 / 2  # population std of (s0, 0)
    a = _gauss_alpha(spread, (0.0, 0.1, 0.2), 0.1)
    w = [a[0] + a[1] / 2, a[2] + a[1] / 2]
    imp = [w[0] * p0[i] + w[1] / 3 for i in range(3)]

    assert isinstance(sel, Selection)
    assert torch.allclose(sel.probe, torch.tensor([p0, [1 / 3] * 3]), atol=1e-6)
    assert sel.selectivity.tolist() == pytest.approx([s0, 0.0], abs=1e-6)
    assert sel.spread == pytest.approx(spread, abs=1e-6)
    assert sel.alpha.tolist() == pytest.approx(a, abs=1e-6)
    assert sel.head_weights.tolist() == pytest.approx(w, abs=1e-6)
    assert sel.importance.tolist() == pytest.approx(imp, abs=1e-6)
    assert sel.keep.tolist() == [0, 1] and sel.keep.dtype == torch.long


def test_select_retain_edges():
    q, k = _probe_inputs([[0.1, 0.5, 0.2, 0.9], [0.3, 0.1, 0.0, 0.4]])
    router = HeadRouter(Profiles.uniform(2))
    assert router.select(q, k, 1.0).keep.tolist() == [0, 1, 2, 3]
    empty = router.select(q, k, 0.0).keep
    assert empty.numel() == 0 and empty.dtype == torch.long
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError):
            router.select(q, k, bad)


def test_select_single_audio_token():
    q, k = _probe_inputs([[0.3], [0.7]])
    sel = HeadRouter(Profiles.uniform(2), prefilter=2.0).select(q, k, 0.5)
    assert sel.keep.numel() == 0 and sel.selectivity.tolist() == [1.0, 1.0] and sel.spread == 0.0
    assert HeadRouter(Profiles.uniform(2)).select(q, k, 1.0).keep.tolist() == [0]


def test_select_ties_break_toward_lower_index():
    q = torch.randn(2, 3, 4)
    k = torch.ones(2, 6, 4)  # identical keys: uniform probe, equal importance everywhere
    assert HeadRouter(Profiles.uniform(2)).select(q, k, 0.5).keep.tolist() == [0, 1, 2]


def test_select_rejects_bad_shapes_and_head_count():
    router = HeadRouter(Profiles.uniform(2))
    with pytest.raises(ProfileError, match="2 head weights but the model has 3"):
        router.select(torch.randn(3, 2, 4), torch.randn(3, 5, 4), 0.5)
    with pytest.raises(ValueError):
        router.select(torch.randn(2, 2, 4), torch.randn(2, 5, 8), 0.5)
    with pytest.raises(ValueError):
        router.select(torch.randn(2, 4), torch.randn(2, 5, 4), 0.5)
    with pytest.raises(ValueError):
        router.select(torch.randn(2, 2, 4), torch.randn(2, 0, 4), 0.5)
    with pytest.raises(ValueError):
        HeadRouter(Profiles.uniform(2), routing="gumbel")
    for bad in (0.5, 0.0, float("nan")):
        with pytest.raises(ValueError):
            HeadRouter(Profiles.uniform(2), prefilter=bad)


def test_select_bfloat16_inputs_do_math_in_float32():
    torch.manual_seed(0)
    q, k = torch.randn(4, 5, 8).bfloat16(), torch.randn(4, 40, 8).bfloat16()
    profiles = Profiles(
        semantic=[1, 2, 3, 4], acoustic=[4, 3, 2, 1], centers=(0.01, 0.05, 0.1), bandwidth=0.02
    )
    router = HeadRouter(profiles, prefilter=2.0)
    low = router.select(q, k, 0.4)
    ref = router.select(q.float(), k.float(), 0.4)
    for name in ("probe", "selectivity", "alpha", "head_weights", "importance"):
        assert getattr(low, name).dtype == torch.float32, name
        assert torch.equal(getattr(low, name), getattr(ref, name)), name
    assert torch.equal(low.keep, ref.keep) and low.spread == ref.spread


def test_routing_far_spread_through_select_is_nan_free():
    q, k = _probe_inputs([[20.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])  # spread near 0.5
    profiles = Profiles(semantic=[1, 0], acoustic=[0, 1], centers=(0.0, 0.001, 0.002), bandwidth=1e-4)
    sel = HeadRouter(profiles).select(q, k, 0.5)
    assert sel.spread > 0.4
    assert torch.isfinite(sel.alpha).all() and torch.isfinite(sel.head_weights).all()
    assert sel.alpha.tolist() == [0.0, 0.0, 1.0] and sel.head_weights.tolist() == [0.0, 1.0]


def test_hard_routing_uses_the_nearest_profile():
    q, k = _probe_inputs([[4.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    profiles = Profiles(semantic=[1, 0], acoustic=[0, 1], centers=(0.0, 0.3, 0.9), bandwidth=1.0)
    hard = HeadRouter(profiles, routing="hard").select(q, k, 0.5)
    assert 0.15 < hard.spread < 0.6  # nearer the uniform center (0.3) than the others
    assert hard.alpha.tolist() == [0.0, 1.0, 0.0] and hard.head_weights.tolist() == [0.5, 0.5]
    soft = HeadRouter(profiles).select(q, k, 0.5)
    assert 0 < soft.alpha[0] < 1 and 0 < soft.alpha[2] < 1  # wide bandwidth: soft mixing uses all three


def test_prefilter_two_stage_hand_worked():
    # one head, probe proportional to (1, 9, 1, 9, 3, 1, 2, 1); keep k = 2 of 8.
    scores = [1, 9, 1, 9, 3, 1, 2, 1]
    q, k = _probe_inputs([[LN(s) for s in scores]])
    profiles = Profiles.uniform(1)
    alone = HeadRouter(profiles).select(q, k, 0.25)
    assert alone.keep.tolist() == [1, 3]
    two_stage = HeadRouter(profiles, prefilter=2.0).select(q, k, 0.25)
    # m = ceil(2 * 2) = 4 candidates int(i*8/4) = (0, 2, 4, 6) -> best two are 4 and 6
    assert two_stage.keep.tolist() == [4, 6]
    # routing statistics do not depend on the pre-filter
    assert torch.equal(two_stage.importance, alone.importance) and two_stage.spread == alone.spread
    assert torch.allclose(two_stage.importance, torch.tensor(scores, dtype=torch.float32) / sum(scores))


def test_prefilter_candidates():
    router = HeadRouter(Profiles.uniform(1), prefilter=1.5)
    assert router.candidates(10, 3).tolist() == [0, 2, 4, 6, 8]  # m = ceil(4.5) = 5
    assert HeadRouter(Profiles.uniform(1), prefilter=3.0).candidates(10, 5).tolist() == list(
        range(10)
    )  # capped
    assert HeadRouter(Profiles.uniform(1)).candidates(4, 1).tolist() == [0, 1, 2, 3]
    assert (
        HeadRouter(Profiles.uniform(1), prefilter=1.1).candidates(100, 10).numel() == 11
    )  # 1.1*10 is 11.000000000000002


def test_prefilter_one_is_the_frame_baseline():
    from headrouter.baselines import select_frame

    torch.manual_seed(1)
    q, k = torch.randn(2, 3, 4), torch.randn(2, 30, 4)
    sel = HeadRouter(Profiles.uniform(2), prefilter=1.0).select(q, k, 0.3)
    assert torch.equal(sel.keep, select_frame(30, 9))


# ---- properties -----------------------------------------------------------------------------------------------

_logit_rows = st.integers(1, 4).flatmap(
    lambda h: st.integers(1, 24).flatmap(
        lambda na: st.lists(
            st.lists(st.floats(-30, 30, allow_nan=False), min_size=na, max_size=na), min_size=h, max_size=h
        )
    )
)


@SETTINGS
@given(_logit_rows)
def test_prop_selectivity_in_unit_interval(rows):
    q, k = _probe_inputs(rows)
    sel = selectivity(probe_distribution(q, k))
    assert torch.isfinite(sel).all() and (sel >= 0).all() and (sel <= 1).all()


@SETTINGS
@given(st.integers(1, 64), st.data())
def test_prop_one_hot_is_one_uniform_is_zero(na, data):
    hot = torch.zeros(1, na)
    hot[0, data.draw(st.integers(0, na - 1))] = 1.0
    assert selectivity(hot).item() == pytest.approx(1.0, abs=1e-6)
    if na > 1:
        assert selectivity(torch.full((1, na), 1.0 / na)).item() == pytest.approx(0.0, abs=1e-6)


_centers = st.tuples(*[st.floats(-1.0, 1.0, allow_nan=False)] * 3)


@SETTINGS
@given(st.floats(-10, 10, allow_nan=False), _centers, st.floats(1e-6, 10.0), st.sampled_from(SPREAD_ROUTINGS))
def test_prop_alpha_sums_to_one(spread, centers, bandwidth, routing):
    alpha = routing_alpha(spread, centers, bandwidth, routing)
    assert torch.isfinite(alpha).all() and (alpha >= 0).all()
    assert alpha.sum().item() == pytest.approx(1.0, abs=1e-6)


@SETTINGS
@given(
    st.lists(st.floats(0.0, 0.5), min_size=3, max_size=3).filter(
        lambda c: min(abs(c[0] - c[1]), abs(c[1] - c[2]), abs(c[0] - c[2])) >= 0.01
    ),
    st.floats(0.005, 0.5),
    st.integers(0, 2),
)
def test_prop_spread_at_a_center_favours_that_profile(centers, bandwidth, c):
    alpha = routing_alpha(centers[c], tuple(centers), bandwidth)
    assert int(torch.argmax(alpha)) == c
    assert alpha[c] > alpha[[i for i in range(3) if i != c]].max()


@SETTINGS
@given(st.data())
def test_prop_head_weights_sum_to_one(data):
    h = data.draw(st.integers(1, 8))
    w_lists = st.lists(st.floats(0.0, 100.0), min_size=h, max_size=h).filter(lambda w: sum(w) > 1e-3)
    sem, aco = data.draw(w_lists), data.draw(w_lists)
    raw = data.draw(st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3).filter(lambda a: sum(a) > 1e-3))
    alpha = torch.tensor(raw) / sum(raw)
    w = mix_head_weights(alpha, torch.tensor(sem), torch.tensor(aco))
    assert (w >= 0).all() and w.sum().item() == pytest.approx(1.0, abs=1e-5)


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.integers(2, 30), st.sampled_from(SPREAD_ROUTINGS))
def test_prop_permuting_audio_permutes_importance(seed, na, routing):
    gen = torch.Generator().manual_seed(seed)
    q, k = torch.randn(3, 4, 8, generator=gen), torch.randn(3, na, 8, generator=gen)
    perm = torch.randperm(na, generator=gen)
    profiles = Profiles(semantic=[3, 1, 0], acoustic=[0, 1, 3], centers=(0.02, 0.06, 0.12), bandwidth=0.03)
    router = HeadRouter(profiles, routing=routing)
    base, permuted = router.select(q, k, 0.5), router.select(q, k[:, perm], 0.5)
    assert torch.allclose(permuted.importance, base.importance[perm], atol=1e-6)
    assert torch.allclose(permuted.probe, base.probe[:, perm], atol=1e-6)
    assert torch.allclose(permuted.selectivity, base.selectivity, atol=1e-5)
    assert torch.allclose(permuted.alpha, base.alpha, atol=1e-4)


@SETTINGS
@given(
    st.integers(0, 2**31 - 1),
    st.integers(1, 60),
    st.floats(0.0, 1.0),
    st.sampled_from([None, 1.0, 1.5, 2.0, 3.0]),
    st.sampled_from(SPREAD_ROUTINGS),
)
def test_prop_keep_is_sorted_unique_in_range_exact(seed, na, retain, prefilter, routing):
    gen = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, 3, 4, generator=gen), torch.randn(2, na, 4, generator=gen) * 3
    profiles = Profiles(semantic=[1, 0], acoustic=[0, 1], centers=(0.01, 0.05, 0.1), bandwidth=0.02)
    keep = HeadRouter(profiles, prefilter=prefilter, routing=routing).select(q, k, retain).keep
    _assert_valid_keep(keep, na, keep_count(na, retain))


def _assert_valid_keep(keep, n, k):
    assert keep.dtype == torch.long and keep.dim() == 1 and keep.numel() == k
    if k:
        assert int(keep.min()) >= 0 and int(keep.max()) < n
        assert (keep[1:] > keep[:-1]).all()  # strictly ascending -> sorted and unique
