"""Baseline audio-token selections the paper compares against: Random, Frame, FastV and DART.

Each returns k unique ascending indices into the audio span (0..Na-1), like HeadRouter.select().keep.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .routing import frame_indices, topk_keep

__all__ = ["fastv_importance", "select_dart", "select_frame", "select_random", "topk_keep"]


def _check_k(n: int, k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= n:
        raise ValueError(f"k must be an int in [0, {n}], got {k!r}")


def select_random(n: int, k: int, seed: int) -> torch.Tensor:
    """k of n indices uniformly at random, reproducible for a given seed (own torch.Generator, global RNG untouched)."""
    _check_k(n, k)
    gen = torch.Generator().manual_seed(int(seed))
    return torch.sort(torch.randperm(n, generator=gen)[:k]).values  # [k]


def select_frame(n: int, k: int) -> torch.Tensor:
    """k evenly spaced indices int(i*n/k) for i < k (AudioMarathon's Frame baseline)."""
    _check_k(n, k)
    return frame_indices(n, k)  # [k]


def fastv_importance(q_last: torch.Tensor, keys: torch.Tensor, audio_index: torch.Tensor) -> torch.Tensor:
    """Eq. 6 (FastV): mean over heads of the last text token's attention, read at the audio positions; [Na] float32.

    q_last [H, d]: the last text token's query at layer M-1, RoPE applied as in the real attention.
    keys [H, T, d]: the keys that token attends to (causal prefix including itself), RoPE applied, GQA repeated.
    The softmax runs over all T keys (as in the model), then is restricted to audio_index [Na].
    """
    if (
        q_last.dim() != 2
        or keys.dim() != 3
        or keys.shape[0] != q_last.shape[0]
        or keys.shape[2] != q_last.shape[1]
    ):
        raise ValueError(
            f"expected q_last [H, d] and keys [H, T, d], got {tuple(q_last.shape)}, {tuple(keys.shape)}"
        )
    q = q_last.float()  # [H, d]
    k = keys.float()  # [H, T, d]
    scores = torch.einsum("hd,htd->ht", q, k) / math.sqrt(q.shape[-1])  # [H, T]
    attn = torch.softmax(scores, dim=-1).mean(dim=0)  # [T]
    return attn[audio_index.to(attn.device).long()]  # [Na]


def _ranked(scores: torch.Tensor) -> torch.Tensor:
    # descending, ties toward the lower index
    return torch.sort(scores, descending=True, stable=True).indices


def select_dart(
    hidden: torch.Tensor,
    keys: torch.Tensor,
    audio_index: torch.Tensor,
    k: int,
    num_pivots: int = 4,
    num_text_pivots: int = 4,
) -> torch.Tensor:
    """DART (duplication-aware): keep pivots and the audio tokens least similar to them; k ascending audio indices.

    hidden [T, D]: final-normed output of layer M-1; keys [T, Dk]: its post-RoPE keys, heads flattened;
    audio_index [Na] ascending positions of the audio span in T.
    Pivots: the top num_pivots audio tokens by key L1 norm (kept themselves) and, as in the public port, the
    top num_text_pivots tokens after the audio span (used only as references, never kept). The remaining
    budget k - (audio pivots) is split evenly over all pivots (earlier pivots take the remainder); each pivot
    in turn adds its share of not-yet-kept audio tokens with the lowest cosine similarity of hidden states
    to it. Skipping tokens already kept makes the result exactly k unique tokens.
    """
    if hidden.dim() != 2 or keys.dim() != 2 or hidden.shape[0] != keys.shape[0]:
        raise ValueError(
            f"expected hidden [T, D] and keys [T, Dk], got {tuple(hidden.shape)}, {tuple(keys.shape)}"
        )
    audio_index = audio_index.to(hidden.device).long()  # [Na]
    na = audio_index.shape[0]
    _check_k(na, k)
    if num_pivots < 0 or num_text_pivots < 0:
        raise ValueError("num_pivots and num_text_pivots must be >= 0")
    if k == 0:
        return torch.empty(0, dtype=torch.long, device=hidden.device)
    if k == na:
        return torch.arange(na, dtype=torch.long, device=hidden.device)

    h = hidden.float()  # [T, D]
    norms = keys.float().abs().sum(dim=-1)  # [T]  key L1 norm
    audio_pivots = _ranked(norms[audio_index])[: min(num_pivots, k)]  # [Pa] audio-span indices
    after = torch.arange(
        int(audio_index[-1]) + 1, h.shape[0], device=h.device
    )  # [T_after] positions after the audio
    text_pivots = after[_ranked(norms[after])[:num_text_pivots]]  # [Pt] sequence positions
    pivot_states = torch.cat([h[audio_index[audio_pivots]], h[text_pivots]])  # [P, D]

    kept = torch.zeros(na, dtype=torch.bool, device=h.device)  # [Na]
    kept[audio_pivots] = True
    budget = k - audio_pivots.shape[0]
    num = pivot_states.shape[0]
    if num == 0:  # num_pivots = num_text_pivots = 0: no references, fall back to the first tokens by key norm
        kept[_ranked(norms[audio_index])[:k]] = True
        return kept.nonzero().squeeze(-1)
    audio_states = h[audio_index]  # [Na, D]
    for i in range(num):
        share = budget // num + (1 if i < budget % num else 0)
        if share == 0:
            continue
        sim = F.cosine_similarity(audio_states, pivot_states[i : i + 1], dim=-1)  # [Na]
        sim = sim.masked_fill(kept, math.inf)  # already kept tokens are never picked again
        order = torch.sort(sim, stable=True).indices  # ascending similarity, ties toward the lower index
        kept[order[:share]] = True
    return kept.nonzero().squeeze(-1)  # [k] ascending
