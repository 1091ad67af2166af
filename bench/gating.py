"""Window-gating benchmark (`python -m jobs.bench gating`): prefill time including the audio encoder on chunks with
0%, 30% and 60% empty 2-s windows, gated (`skip_silence="energy"`) vs not, beside the FLOP arithmetic.

The model is the stock Qwen2.5-Omni thinker with its real audio encoder, both scaled by the same width factor from
the 3B (text hidden 2048 -> `hidden`, encoder d_model 1280 -> 1280 * hidden / 2048; encoder layers 32/36 of the
text layers), dummy weights, run through `LALM.generate` (one new token): the product's path. The time is the
engine's prefill_s (encoder + LLM prefill) plus, for the gated runs, the detector's time on the waveform.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import replace

import numpy as np

from bench.flops import AUDIO_ENCODER_OMNI, OMNI_3B_TEXT, EncoderShape, audio_encoder_flops, prefill_flops

__all__ = ["gating_rows", "render_gating", "run_gating"]

log = logging.getLogger("bench")

EMPTY = (0.0, 0.3, 0.6)
PROMPT = "what did the speaker say about the meeting ?"
TEXT_TOKENS = 30  # roughly the template and prompt around the audio span, for the real-shape arithmetic


def chunk(seconds: float, empty: float, seed: int = 0) -> np.ndarray:
    """Tone + noise with `empty` of its whole 2-s windows (evenly spread) set to digital silence ([n] float32)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 330 * t) + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)
    windows = int(seconds // 2)
    for w in range(windows):
        if int((w + 1) * empty) > int(w * empty):
            audio[w * 32000 : (w + 1) * 32000] = 0.0
    return audio


def _model(hidden: int, layers: int):
    import torch
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    from bench.prefill import scaled_3b_shape
    from headrouter.engine import LALM
    from headrouter.engine.adapters.qwen2_5_omni import Qwen25Omni
    from headrouter.engine.audio import make_feature_extractor
    from headrouter.engine.tiny import build_word_tokenizer, tiny_thinker_config

    torch.manual_seed(0)
    tok = build_word_tokenizer()
    text = scaled_3b_shape(hidden, layers).text
    d_model = max(20, round(AUDIO_ENCODER_OMNI.d_model * hidden / OMNI_3B_TEXT.hidden / 20) * 20)
    enc_layers = max(1, round(layers * AUDIO_ENCODER_OMNI.layers / OMNI_3B_TEXT.layers))
    config = tiny_thinker_config(
        len(tok), tok, hidden_size=text.hidden, num_layers=text.layers, num_heads=text.heads,
        num_kv_heads=text.kv_heads, intermediate_size=text.intermediate, audio_d_model=d_model,
        audio_layers=enc_layers, audio_heads=20,
    )  # fmt: skip
    config.audio_config.encoder_ffn_dim = 4 * d_model
    model = Qwen2_5OmniThinkerForConditionalGeneration._from_config(config, attn_implementation="sdpa")
    model.eval()
    lalm = LALM(model, tok, make_feature_extractor(), Qwen25Omni, model_id="gating-bench", folder=None)
    encoder = EncoderShape(d_model=d_model, layers=enc_layers, ffn=4 * d_model, output_dim=text.hidden)
    return lalm, replace(text, vocab=len(tok)), encoder


def _flop_ratio(text, encoder, seconds: float, empty_s: float) -> dict:
    """Ungated / gated FLOPs of encoder + LLM prefill (bench.flops; 25 audio tokens per second)."""
    n, kept = round(seconds * 25), round((seconds - empty_s) * 25)
    full = audio_encoder_flops(encoder, seconds) + prefill_flops(text, n + TEXT_TOKENS)["total"]
    gated = audio_encoder_flops(encoder, seconds - empty_s) + prefill_flops(text, kept + TEXT_TOKENS)["total"]
    return {"flop_ratio": full / gated, "encoder_share": audio_encoder_flops(encoder, seconds) / full}


def gating_rows(seconds: float, hidden: int, layers: int, rounds: int) -> dict:
    """Measured prefill (encoder included) gated vs not per empty fraction, and the FLOP ratios."""
    from headrouter import PruneOptions
    from headrouter.engine.gating import detect_empty

    lalm, text, encoder = _model(hidden, layers)
    off = PruneOptions(method="vanilla", skip_silence="off")
    on = PruneOptions(method="vanilla", skip_silence="energy")
    audios = {p: chunk(seconds, p) for p in EMPTY}
    lalm.generate([audios[0.0][: 16000 * 4]], [PROMPT], off, 1)  # warm-up: one-time costs out of the timing
    rows = []
    for p, audio in audios.items():
        runs = []
        for r in range(rounds):
            pair = {}
            for name, opts in (
                (("off", off), ("energy", on)) if r % 2 == 0 else (("energy", on), ("off", off))
            ):
                started = time.perf_counter()
                detect_empty(opts.skip_silence, audio, len(audio) // 160, 200)
                detector = time.perf_counter() - started
                out = lalm.generate([audio], [PROMPT], opts, 1)[0]
                pair[name] = (out.prefill_s, detector, out.skipped_s, out.audio_tokens)
            runs.append(pair)
            log.info("gating: %d%% empty, round %d/%d", round(100 * p), r + 1, rounds)
        skipped = runs[0]["energy"][2]
        rows.append(
            {
                "empty_fraction": p,
                "seconds": seconds,
                "skipped_s": skipped,
                "audio_tokens": runs[0]["off"][3],
                "audio_tokens_gated": runs[0]["energy"][3],
                "prefill_s": statistics.median(x["off"][0] for x in runs),
                "gated_prefill_s": statistics.median(x["energy"][0] for x in runs),
                "detector_s": statistics.median(x["energy"][1] for x in runs),
                # median over rounds of ungated / (gated + detector), same round
                "speedup": statistics.median(x["off"][0] / (x["energy"][0] + x["energy"][1]) for x in runs),
                "scaled": _flop_ratio(text, encoder, seconds, skipped),
                "omni_3b": _flop_ratio(OMNI_3B_TEXT, AUDIO_ENCODER_OMNI, 300.0, 300.0 * skipped / seconds),
            }
        )
    return {
        "text": text.to_dict(),
        "encoder": {"d_model": encoder.d_model, "layers": encoder.layers, "ffn": encoder.ffn},
        "rounds": rounds,
        "rows": rows,
    }


def run_gating(run) -> None:
    """bench.suite runner: 300-s chunks (quick: 20 s) on the plan's width and depth."""
    plan = run.plan
    seconds = 300.0 if plan.rtf_file_s >= 300 else 20.0
    run.results["gating"] = gating_rows(seconds, plan.hidden, plan.layers, max(plan.rounds))


def render_gating(g: dict) -> str:
    t, e = g["text"], g["encoder"]
    lines = [
        "\n## Window gating (skip_silence)\n\n",
        f"Qwen2.5-Omni thinker with its audio encoder, dummy weights: text {t['layers']} layers hidden {t['hidden']}, "
        f"encoder {e['layers']} layers d_model {e['d_model']}; {g['rounds']} interleaved rounds, medians. Time = "
        "prefill_s of `LALM.generate` (audio encoder + LLM prefill), gated time + the energy detector. FLOP ratio "
        "= ungated / gated (encoder included, bench/flops.py), for this shape and for the real 3B on 300 s.\n\n",
        "| empty windows | audio s | skipped s | audio tokens (gated) | prefill s | gated s | detector s | "
        "speed-up | FLOP ratio (this shape) | FLOP ratio (3B) | encoder share of 3B FLOPs |\n",
        "|---|---|---|---|---|---|---|---|---|---|---|\n",
    ]
    for r in g["rows"]:
        lines.append(
            f"| {100 * r['empty_fraction']:.0f}% | {r['seconds']:.0f} | {r['skipped_s']:.0f} | "
            f"{r['audio_tokens']} ({r['audio_tokens_gated']}) | {r['prefill_s']:.3f} | {r['gated_prefill_s']:.3f} | "
            f"{r['detector_s']:.4f} | {r['speedup']:.2f}x | {r['scaled']['flop_ratio']:.2f}x | "
            f"{r['omni_3b']['flop_ratio']:.2f}x | {100 * r['omni_3b']['encoder_share']:.0f}% |\n"
        )
    return "".join(lines)
