"""Window gating (headrouter.engine.gating) on the tiny-random Qwen2.5-Omni thinker, float32: kept windows encode as in
the ungated encoder, kept tokens keep their ungated position ids at prefill and decode, nothing changes when
no window is empty, an all-empty clip is `silent`, a batch gives what each clip gives alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headrouter import PruneOptions
from headrouter.engine.gating import energy_empty, gate_inputs, window_tokens
from tests.test_batch import _eos
from tests.test_engine import PROMPT, clip, masked_reference_logits, text_rotary, tiny

SR = 16000
WINDOW = 200  # mel frames per encoder window (n_window 100)


def gappy(pattern: str, tail_s: float = 0.9, seed: int = 0) -> np.ndarray:
    """2-s windows of tone + noise ("x") or digital silence ("-"), then `tail_s` of tone (a partial window)."""
    sound = clip(2.0 * len(pattern) + tail_s, seed)
    for w, c in enumerate(pattern):
        if c == "-":
            sound[w * 2 * SR : (w + 1) * 2 * SR] = 0.0
    return sound


def _gated(method="vanilla", retain=1.0, mode="energy"):
    return PruneOptions(method=method, retain=retain, layer=2, skip_silence=mode)


def test_window_tokens_and_the_energy_detector():
    assert window_tokens(1000, WINDOW) == [50] * 5
    assert window_tokens(1090, WINDOW) == [50] * 5 + [22]
    audio = gappy("x-x--")
    assert energy_empty(audio, len(audio) // 160, WINDOW).tolist() == [False, True, False, True, True, False]
    quiet = 0.001 * clip(6.0, 3)  # quiet noise alone is the chunk's content: nothing is empty
    assert not energy_empty(quiet, len(quiet) // 160, WINDOW).any()
    assert energy_empty(np.zeros(SR * 3, np.float32), 300, WINDOW).all()


def test_kept_windows_encode_exactly_as_in_the_ungated_encoder():
    lalm = tiny()
    audio = gappy("x-xx-x", tail_s=1.37, seed=1)
    full = lalm.prepare(audio, PROMPT)
    frames = int(full["feature_attention_mask"].sum())
    empty = np.array([False, True, False, False, True, False, False])
    ids, feats, kept_frames, positions = gate_inputs(
        full["input_ids"], full["input_features"][0], frames, empty, lalm.token_ids.audio, WINDOW
    )
    with torch.inference_mode():
        ref = lalm.model.get_audio_features(full["input_features"], full["feature_attention_mask"])
        got = lalm.model.get_audio_features(feats[None], torch.ones(1, kept_frames, dtype=torch.long))
    counts = window_tokens(frames, WINDOW)
    keep_tokens = torch.from_numpy(np.repeat(~empty, counts))
    assert (
        got.last_hidden_state.shape[0] == int(keep_tokens.sum()) == int((ids == lalm.token_ids.audio).sum())
    )
    torch.testing.assert_close(got.last_hidden_state, ref.last_hidden_state[keep_tokens], atol=1e-5, rtol=0)
    # every kept token sits at its position in the ungated prompt, and it is the same token there
    assert torch.equal(full["input_ids"][0, positions[0, 0]], ids[0])
    assert torch.equal(positions[0], positions[1]) and torch.equal(positions[0], positions[2])


def test_gated_prefill_equals_the_ungated_model_with_empty_windows_masked():
    """Gating == the ungated prompt in which no layer may attend to the empty windows' tokens, positions kept."""
    lalm = tiny()
    audio = gappy("x--x-", seed=2)
    full = lalm.prepare(audio, PROMPT)
    audio_pos = (full["input_ids"][0] == lalm.token_ids.audio).nonzero().flatten()
    counts = window_tokens(int(full["feature_attention_mask"].sum()), WINDOW)
    empty = np.array([False, True, True, False, True, False])
    keep = torch.ones(full["input_ids"].shape[1], dtype=torch.bool)
    keep[audio_pos] = torch.from_numpy(np.repeat(~empty, counts))
    ref = masked_reference_logits(lalm, audio, PROMPT, 0, keep.nonzero().flatten())
    for method, retain in (("vanilla", 1.0), ("headrouter", 1.0)):
        logits, _ = lalm.prefill_logits(audio, PROMPT, _gated(method, retain))
        torch.testing.assert_close(logits, ref, atol=1e-4, rtol=0)
    vanilla, _ = lalm.prefill_logits(audio, PROMPT)
    assert (vanilla - ref).abs().max() > 1e-4  # gating really changed the input


def test_kept_tokens_keep_their_ungated_positions_at_prefill_and_decode():
    lalm = tiny()
    audio = gappy("-x-x", seed=3)
    t_full = lalm.prepare(audio, PROMPT)["input_ids"].shape[1]
    seen = []
    spy = text_rotary(lalm).register_forward_pre_hook(lambda mod, args: seen.append(args[1].clone()))
    try:
        with _eos(lalm, None):
            out = lalm.generate([audio], [PROMPT], _gated("headrouter", 0.5), max_new_tokens=4)[0]
    finally:
        spy.remove()
    assert out.skipped_s == pytest.approx(4.0) and not out.silent and len(out.token_ids) == 4
    prefill, steps = seen[0], seen[1:]
    assert prefill.shape[0] == 3 and prefill.shape[-1] == t_full - 100  # two 2-s windows: 100 tokens fewer
    assert torch.equal(prefill[0], prefill[1]) and torch.equal(prefill[0], prefill[2])
    # text and <|audio_bos|>, windows 1, 3 and the partial window 4 (tokens 50-99, 150-221), the rest
    bos = int((lalm.prepare(audio, PROMPT)["input_ids"][0] == lalm.token_ids.bos).nonzero())
    audio_kept = torch.cat([torch.arange(50, 100), torch.arange(150, 222)])
    expected = torch.cat([torch.arange(bos + 1), bos + 1 + audio_kept, torch.arange(bos + 1 + 222, t_full)])
    assert torch.equal(prefill[0, 0], expected)
    # decode: generated tokens continue after the ungated prompt, on all three rows
    assert [s[:, 0, -1].tolist() for s in steps] == [[t_full + k] * 3 for k in range(3)]


def test_no_empty_window_is_exactly_the_ungated_path():
    """A clip with no empty window gives the ungated result both where gating hands the batch back unchanged (it
    alone) and where gating rebuilds the batch with explicit positions (beside a silent clip, which leaves it)."""
    lalm = tiny()
    audio = clip(5.3, seed=4)
    silent = np.zeros(int(2.5 * SR), np.float32)
    for method in ("vanilla", "headrouter", "fastv"):
        off = lalm.generate(
            [audio], [PROMPT], _gated(method, 0.4, "off"), 5, min_new_tokens=5, return_logits=True
        )[0]
        alone = lalm.generate(
            [audio], [PROMPT], _gated(method, 0.4), 5, min_new_tokens=5, return_logits=True
        )[0]
        quiet, rebuilt = lalm.generate(
            [silent, audio], [PROMPT] * 2, _gated(method, 0.4), 5, min_new_tokens=5, return_logits=True
        )
        assert quiet.silent and quiet.skipped_s == 2.5
        for on in (alone, rebuilt):
            assert on.token_ids == off.token_ids and on.kept_index == off.kept_index, method
            torch.testing.assert_close(on.logits, off.logits, atol=1e-5, rtol=0)
            assert on.skipped_s == 0.0 and on.audio_tokens == off.audio_tokens
        assert torch.equal(alone.logits, off.logits)  # handed back unchanged: the stock path itself


def test_all_empty_clip_is_silent_never_an_error():
    lalm = tiny()
    silent = np.zeros(int(4.5 * SR), np.float32)
    outs = lalm.generate([silent, clip(1.0)], [PROMPT, PROMPT], _gated("headrouter", 0.4), 3)
    assert outs[0].silent and outs[0].text == "" and outs[0].token_ids == [] and outs[0].skipped_s == 4.5
    assert not outs[1].silent and outs[1].token_ids and outs[1].skipped_s == 0.0
    assert lalm.generate([silent], [PROMPT], _gated(), 3)[0].silent


@pytest.mark.parametrize("method", ["vanilla", "headrouter", "dart", "fastv"])
def test_gated_batch_equals_each_clip_alone(method):
    lalm = tiny()
    audios = [gappy("x-x", seed=5), clip(1.7, 6), gappy("--x--x-", 0.3, seed=7), np.zeros(SR, np.float32)]
    prompts = [PROMPT, "what is the speaker talking about ?", "summarize", PROMPT]
    opts = _gated(method, 0.4)
    with _eos(lalm, None):
        batch = lalm.generate(audios, prompts, opts, max_new_tokens=4, return_logits=True)
        for i, out in enumerate(batch):
            alone = lalm.generate([audios[i]], [prompts[i]], opts, max_new_tokens=4, return_logits=True)[0]
            assert (out.token_ids, out.kept_index, out.silent) == (
                alone.token_ids,
                alone.kept_index,
                alone.silent,
            )
            assert (out.audio_tokens, out.kept_tokens, out.skipped_s) == (
                alone.audio_tokens,
                alone.kept_tokens,
                alone.skipped_s,
            )
            if not out.silent:
                torch.testing.assert_close(out.logits, alone.logits, atol=1e-4, rtol=0)
    assert [o.skipped_s for o in batch] == [2.0, 0.0, 10.0, 1.0] and batch[3].silent


def test_gating_is_refused_where_it_is_not_exact():
    lalm = tiny("tiny-random-qwen2-audio")
    with pytest.raises(ValueError, match="only for Qwen2.5-Omni"):
        lalm.generate([clip(1.0)], [PROMPT], _gated(), 2)
    with pytest.raises(ValueError, match="skip_silence must be one of"):
        PruneOptions(skip_silence="loud")


def test_pipeline_rows_carry_skipped_seconds_and_the_silent_flag():
    from pipeline.sink import CHUNK_SCHEMA
    from workers.inference import InferenceWorker
    from workers.options import WorkerOptions

    worker = InferenceWorker(
        WorkerOptions(model="tiny-random", prune=PruneOptions(skip_silence="vad"), max_new_tokens=2),
        CHUNK_SCHEMA,
    )
    tone = clip(4.0, seed=8)  # no speech: every window empty for the VAD
    rows = [{"run_id": "r", "attempt_id": "a", "id": i, "source": i, "task": "asr", "question": None,
             "choices": None, "chunk_index": 0, "start_s": 0.0, "end_s": a.size / SR, "last": True,
             "silent": False, "status": "ok", "error": "", "audio": a.astype("<f4").tobytes()}
            for i, a in (("tone", tone), ("zeros", np.zeros(2 * SR, np.float32)))]  # fmt: skip
    out = worker.infer(rows)
    for row in out:
        assert row["status"] == "ok" and row["silent"] and row["text"] == "", row
    assert [row["skipped_s"] for row in out] == [4.0, 2.0]
    energy = InferenceWorker(
        WorkerOptions(model="tiny-random", prune=PruneOptions(skip_silence="energy"), max_new_tokens=2),
        CHUNK_SCHEMA,
    )
    row = energy.infer([rows[0] | {"audio": gappy("x-", 0.5).astype("<f4").tobytes(), "end_s": 4.5}])[0]
    assert (
        row["status"] == "ok"
        and not row["silent"]
        and row["skipped_s"] == 2.0
        and row["audio_tokens"] == 50 + 12
    )


def test_gating_benchmark_rows():
    from bench.gating import gating_rows, render_gating

    g = gating_rows(8.0, hidden=64, layers=3, rounds=1)
    rows = {r["empty_fraction"]: r for r in g["rows"]}
    assert [rows[p]["skipped_s"] for p in (0.0, 0.3, 0.6)] == [0.0, 2.0, 4.0]
    assert rows[0.0]["audio_tokens_gated"] == rows[0.0]["audio_tokens"] == 200
    assert rows[0.6]["audio_tokens_gated"] == 100 and rows[0.6]["scaled"]["flop_ratio"] > 1.5
    assert rows[0.0]["omni_3b"]["flop_ratio"] == 1.0 and 0.2 < rows[0.0]["omni_3b"]["encoder_share"] < 0.4
    assert "| 60% |" in render_gating(g)
