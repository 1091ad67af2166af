"""Random, Frame, FastV and DART baselines: hand-worked values and the shared keep invariants."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from headrouter import keep_count
from headrouter.baselines import fastv_importance, select_dart, select_frame, select_random, topk_keep

SETTINGS = settings(max_examples=60, deadline=None)


def _assert_valid_keep(keep, n, k):
    assert keep.dtype == torch.long and keep.dim() == 1 and keep.numel() == k
    if k:
        assert int(keep.min()) >= 0 and int(keep.max()) < n
        assert (keep[1:] > keep[:-1]).all()  # strictly ascending -> sorted and unique


def test_topk_keep_hand_worked_ties_and_order():
    scores = torch.tensor([0.1, 0.5, 0.5, 0.2, 0.9, 0.5])
    assert topk_keep(scores, 3).tolist() == [1, 2, 4]  # ascending indices; 0.5 ties go to the lower index
    assert topk_keep(scores, 4).tolist() == [1, 2, 4, 5]
    assert topk_keep(torch.ones(4), 2).tolist() == [0, 1]
    assert topk_keep(scores, 0).numel() == 0 and topk_keep(scores, 6).tolist() == list(range(6))
    # FastV keeps the top-k of its importance exactly like the router does (same rule for every method)
    gen = torch.Generator().manual_seed(0)
    q, keys = torch.randn(2, 8, generator=gen), torch.randn(2, 20, 8, generator=gen)
    imp = fastv_importance(q, keys, torch.arange(5, 15))
    keep = topk_keep(imp, 4)
    assert set(keep.tolist()) == set(torch.topk(imp, 4).indices.tolist())
    with pytest.raises(ValueError):
        topk_keep(torch.tensor([0.1, float("nan")]), 1)


# ---- random ---------------------------------------------------------------------------------------------------


def test_random_is_seeded_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a, b = select_random(100, 30, seed=7), select_random(100, 30, seed=7)
    assert torch.equal(a, b)
    assert not torch.equal(a, select_random(100, 30, seed=8))
    assert torch.equal(torch.get_rng_state(), state)
    _assert_valid_keep(a, 100, 30)
    assert select_random(5, 5, 0).tolist() == [0, 1, 2, 3, 4] and select_random(5, 0, 0).numel() == 0
    with pytest.raises(ValueError):
        select_random(5, 6, 0)


# ---- frame ----------------------------------------------------------------------------------------------------


def test_frame_hand_worked():
    assert select_frame(10, 4).tolist() == [0, 2, 5, 7]  # int(0), int(2.5), int(5), int(7.5)
    assert select_frame(9, 3).tolist() == [0, 3, 6]
    assert select_frame(5, 5).tolist() == [0, 1, 2, 3, 4]
    assert select_frame(5, 0).numel() == 0 and select_frame(5, 0).dtype == torch.long
    with pytest.raises(ValueError):
        select_frame(3, 4)


@SETTINGS
@given(st.integers(1, 3000), st.data())
def test_prop_frame_matches_audiomarathon_formula(n, data):
    k = data.draw(st.integers(0, n))
    keep = select_frame(n, k)
    assert keep.tolist() == [int(i * n / k) for i in range(k)]
    _assert_valid_keep(keep, n, k)


# ---- fastv ----------------------------------------------------------------------------------------------------


def test_fastv_hand_worked_softmax_over_all_keys():
    # T=4, audio at positions 1, 2. Head 0 (d=1): q=1, keys (0, ln2, ln3, 0) -> softmax (1, 2, 3, 1)/7.
    # Head 1: q=0 -> uniform 1/4. Importance = mean over heads, read at the audio positions.
    q_last = torch.tensor([[1.0], [0.0]])  # [2, 1]
    keys = torch.tensor(
        [[[0.0], [math.log(2)], [math.log(3)], [0.0]], [[5.0], [1.0], [2.0], [3.0]]]
    )  # [2, 4, 1]
    imp = fastv_importance(q_last, keys, torch.tensor([1, 2]))
    assert imp.dtype == torch.float32
    assert imp.tolist() == pytest.approx([(2 / 7 + 1 / 4) / 2, (3 / 7 + 1 / 4) / 2], abs=1e-6)


def test_fastv_scales_by_sqrt_d_and_accepts_bfloat16():
    q_last = torch.tensor([[2.0, 0.0, 0.0, 0.0]])  # [1, 4]
    keys = torch.zeros(1, 2, 4)
    keys[0, 0, 0] = 1.0  # logit 2*1/sqrt(4) = 1
    imp = fastv_importance(q_last.bfloat16(), keys.bfloat16(), torch.tensor([0]))
    assert imp.dtype == torch.float32 and imp.item() == pytest.approx(math.e / (math.e + 1), abs=1e-6)
    with pytest.raises(ValueError):
        fastv_importance(torch.randn(2, 4), torch.randn(3, 5, 4), torch.tensor([0]))


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.integers(1, 40), st.floats(0.0, 1.0))
def test_prop_fastv_keep_valid(seed, na, retain):
    gen = torch.Generator().manual_seed(seed)
    t = na + 7
    audio_index = torch.arange(3, 3 + na)
    imp = fastv_importance(torch.randn(4, 8, generator=gen), torch.randn(4, t, 8, generator=gen), audio_index)
    assert imp.shape == (na,) and (imp >= 0).all()
    k = keep_count(na, retain)
    _assert_valid_keep(topk_keep(imp, k), na, k)


# ---- dart -----------------------------------------------------------------------------------------------------


def _dart_case():
    # T=8: position 0 text, 1..5 audio (Na=5), 6..7 text after the audio.
    hidden = torch.tensor(
        [
            [0.3, 0.3],  # 0 text before the audio (never a pivot)
            [1.0, 0.0],  # a0
            [1.0, 0.1],  # a1
            [1.0, 0.0],  # a2  largest key norm -> audio pivot
            [0.0, 1.0],  # a3
            [-1.0, 0.0],  # a4
            [0.5, 0.5],  # 6 text
            [-1.0, -0.2],  # 7 text, largest post-audio key norm -> text pivot
        ]
    )
    norms = [50.0, 1.0, 2.0, 9.0, 3.0, 4.0, 1.0, 8.0]
    keys = torch.zeros(8, 3)
    keys[:, 0] = -torch.tensor(norms)  # L1 norm, so the sign must not matter
    return hidden, keys, torch.arange(1, 6)


def test_dart_hand_worked():
    hidden, keys, audio_index = _dart_case()
    # pivots a2 (audio) and position 7 (text); budget 3 - 1 = 2 -> one token per pivot.
    # a2=(1,0): cos to a0 1, a1 .995, a3 0, a4 -1 -> a4.  pos 7: cos to a0 -.98, a1 -.995, a3 -.196 -> a1.
    keep = select_dart(hidden, keys, audio_index, 3, num_pivots=1, num_text_pivots=1)
    assert keep.tolist() == [1, 2, 4]
    # without the text pivot the audio pivot takes both: a4 (-1), then a3 (0)
    assert select_dart(hidden, keys, audio_index, 3, num_pivots=1, num_text_pivots=0).tolist() == [2, 3, 4]


def test_dart_skips_duplicates_to_reach_exactly_k():
    hidden, keys, audio_index = _dart_case()
    # audio key norms a2 9, a4 4 -> pivots a2, a4; budget 4 - 2 = 2, one each.
    # a2 would pick a4 (already a pivot) -> next lowest a3 (0); a4=(-1,0) picks a0 (cos -1) -> {0, 2, 3, 4}
    keep = select_dart(hidden, keys, audio_index, 4, num_pivots=2, num_text_pivots=0)
    assert keep.tolist() == [0, 2, 3, 4]


def test_dart_edges():
    hidden, keys, audio_index = _dart_case()
    assert select_dart(hidden, keys, audio_index, 0).numel() == 0
    assert select_dart(hidden, keys, audio_index, 5).tolist() == [0, 1, 2, 3, 4]
    # k smaller than the pivot count keeps the k strongest audio pivots
    assert select_dart(hidden, keys, audio_index, 1, num_pivots=4).tolist() == [2]
    # audio at the very end: no post-audio tokens, no text pivots
    keep = select_dart(hidden[:6], keys[:6], audio_index, 2, num_pivots=1)
    assert keep.tolist() == [2, 4]
    with pytest.raises(ValueError):
        select_dart(hidden, keys, audio_index, 6)


@SETTINGS
@given(
    st.integers(0, 2**31 - 1),
    st.integers(1, 40),
    st.integers(0, 6),
    st.floats(0.0, 1.0),
    st.integers(0, 6),
    st.integers(0, 6),
)
def test_prop_dart_keep_valid(seed, na, after, retain, num_pivots, num_text_pivots):
    gen = torch.Generator().manual_seed(seed)
    t = 2 + na + after
    hidden, keys = torch.randn(t, 16, generator=gen), torch.randn(t, 12, generator=gen)
    hidden[2] = 0.0  # a zero hidden state must not produce NaN cosine similarities
    k = keep_count(na, retain)
    keep = select_dart(hidden.bfloat16(), keys, torch.arange(2, 2 + na), k, num_pivots, num_text_pivots)
    _assert_valid_keep(keep, na, k)
