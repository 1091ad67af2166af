"""`python -m bench.gpu_engine --out DIR`: the engine at full size on one GPU (what bench/gpu.sh runs).

The Qwen2.5-Omni-3B thinker shape (text: hidden 2048, 36 layers, 16/2 heads, vocab 151936) with a real-size audio
encoder (32 layers, d_model 1280, FFN 5120), random weights, bf16, SDPA, 300-s chunks (7,500 audio tokens):
1. encoder: ms per chunk with the stock per-window attention and with one call per window length, outputs compared;
2. decode: ms per step at batch 1/8/32/64, vanilla and HeadRouter 0.4 = (call of LONG tokens - call of SHORT) /
   the extra steps, beside the bandwidth floor (decoder + lm_head weights and the batch's KV read once per step at
   the copy bandwidth measured here);
3. end to end: audio seconds per second at batch 64 with NEW tokens per chunk (forced: min = max new tokens),
   vanilla / HeadRouter 0.4 / FastV 0.4;
4. the owned loop's tokens vs transformers' generate (the previous engine) on one small batch, both methods.
Writes DIR/results.json (the schema of bench/gpu_results.py, which the cost model reads) and DIR/bench.md.
Needs only torch, transformers, numpy and this checkout (no Ray). `--quick` runs toy sizes on the CPU (tests).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.batch import _Clock
from bench.loop import encoder_ms

log = logging.getLogger("bench")

METHODS = (("vanilla", 1.0), ("headrouter", 0.4), ("fastv", 0.4))


def _key(method: str, retain: float) -> str:
    return "vanilla" if method == "vanilla" else f"{method}-{retain:g}"


def build(quick: bool, device: str, audio_layers: int = 2, audio_d_model: int = 64):
    """The LALM of the benchmark: the 3B text shape and the real encoder size (toy sizes with quick, whose
    encoder has `audio_layers` x `audio_d_model`)."""
    import torch
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    from headrouter.engine import LALM
    from headrouter.engine.adapters.qwen2_5_omni import Qwen25Omni
    from headrouter.engine.audio import make_feature_extractor
    from headrouter.engine.tiny import build_word_tokenizer, special_token_ids, tiny_thinker_config

    tok = build_word_tokenizer()
    if quick:
        size = dict(hidden_size=64, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=128)
        audio = dict(audio_d_model=audio_d_model, audio_layers=audio_layers, audio_heads=4)
        vocab = len(tok)
    else:
        size = dict(hidden_size=2048, num_layers=36, num_heads=16, num_kv_heads=2, intermediate_size=11008)
        audio = dict(audio_d_model=1280, audio_layers=32, audio_heads=20)
        vocab = 151936
    config = tiny_thinker_config(vocab, tok, **size, **audio)
    config.audio_config.encoder_ffn_dim = 4 * config.audio_config.d_model  # 5120 at full size
    torch.manual_seed(0)
    dtype = torch.float32 if quick else torch.bfloat16
    with torch.device(device):
        model = Qwen2_5OmniThinkerForConditionalGeneration._from_config(
            config, attn_implementation="sdpa", dtype=dtype
        )
    model.eval()
    ids = special_token_ids(tok)
    model.generation_config.eos_token_id = [ids["eos_token_id"], ids["endoftext_token_id"]]
    model.generation_config.pad_token_id = ids["pad_token_id"]
    return LALM(
        model, tok, make_feature_extractor(window_s=300.0), Qwen25Omni, model_id="omni3b-bench", folder=None
    )


def call(lalm, clips, method, retain, new_tokens, clock):
    from headrouter import PruneOptions

    opts = PruneOptions(method=method, retain=retain)
    t0 = clock()
    outs = lalm.generate(clips, [lalm.asr_prompt] * len(clips), opts, new_tokens, min_new_tokens=new_tokens)
    return outs, clock() - t0


def copy_bandwidth(device: str, clock) -> float:
    """Bytes per second of a large device-to-device copy (read + write counted)."""
    import torch

    n = (1 << 30) if device == "cuda" else (1 << 24)
    a = torch.empty(n, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    b.copy_(a)
    t0 = clock()
    for _ in range(5):
        b.copy_(a)
    return 2 * 5 * n / (clock() - t0)


def run(out: Path, quick: bool) -> dict:
    import numpy as np
    import torch
    import transformers

    from headrouter.engine.loop import EngineOptions

    cuda = torch.cuda.is_available() and not quick
    device = "cuda" if cuda else "cpu"
    clock = _Clock(cuda).now  # wall time on CUDA (synchronized), process CPU time on the CPU
    started = time.time()
    lalm = build(quick, device)
    chunk_s = 20.0 if quick else 300.0
    batches = (1, 2) if quick else (1, 8, 32, 64)
    short, long, new = (2, 6, 8) if quick else (16, 80, 900)
    rounds = 1 if quick else 3
    rng = np.random.default_rng(0)
    pool = [(0.1 * rng.standard_normal(int(chunk_s * 16000))).astype(np.float32) for _ in range(max(batches))]
    res = {"schema": 1, "gpu": torch.cuda.get_device_name(0) if cuda else "cpu (quick)", "date":
           datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"), "torch": torch.__version__,
           "transformers": transformers.__version__, "commit": _commit(), "shape": "qwen2.5-omni-3b", "layer": 2,
           "chunk_s": chunk_s, "new_tokens": new}  # fmt: skip
    res["gpu_key"] = _gpu_key(res["gpu"])
    counts = lalm.token_counts(len(pool[0]), lalm.asr_prompt)
    res["input_tokens"], res["audio_tokens"] = counts
    res["peaks"] = {"copy_tb_s": copy_bandwidth(device, clock) / 1e12}
    res["encoder_ms_per_chunk"] = encoder_ms(lalm, pool[0], rounds, clock)
    log.info("encoder: %s", res["encoder_ms_per_chunk"])
    weights = sum(p.numel() * p.element_size() for n, p in lalm.model.named_parameters() if "audio_tower" not in n
                  and "visual" not in n)  # fmt: skip
    prefill, decode, floor, peak, aps = {}, {}, {}, {}, {}
    for method, retain in METHODS[:2]:
        k = _key(method, retain)
        for b in batches:
            steps = []
            for _ in range(rounds):
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                outs_s, _ = call(lalm, pool[:b], method, retain, short, clock)
                outs_l, _ = call(lalm, pool[:b], method, retain, long, clock)
                d_s, d_l = sum(o.decode_s for o in outs_s), sum(o.decode_s for o in outs_l)
                steps.append((d_l - d_s) / (long - short) * 1e3)
                prefill.setdefault(k, {})[str(b)] = sum(o.prefill_s for o in outs_l)
            ms = statistics.median(steps)
            decode.setdefault(k, {})
            if ms > 0:  # a difference of two calls: noise can make it meaningless on a busy CPU (--quick)
                decode[k][str(b)] = ms
            else:
                log.warning("decode %s b=%d: non-positive step time %.3f ms dropped (noise)", k, b, ms)
            kv = sum(o.kv_bytes_kept for o in outs_l)  # the batch's cache after prefill
            per_token_new = outs_l[0].kv_bytes_full / res["input_tokens"]
            step_bytes = weights + kv + b * per_token_new * (long + short) / 2
            floor.setdefault(k, {})[str(b)] = step_bytes / (res["peaks"]["copy_tb_s"] * 1e12) * 1e3
            if cuda:
                peak.setdefault(k, {})[str(b)] = torch.cuda.max_memory_allocated() / 2**30
            log.info("decode %s b=%d: %.2f ms/step (floor %.2f)", k, b, ms, floor[k][str(b)])
    b = max(batches)
    for method, retain in METHODS:
        k = _key(method, retain)
        outs, spent = call(lalm, pool[:b], method, retain, new, clock)
        assert all(len(o.token_ids) == new for o in outs), "forced lengths not reached"
        aps.setdefault(k, {})[str(b)] = b * chunk_s / spent
        prefill.setdefault(k, {}).setdefault(str(b), sum(o.prefill_s for o in outs))
        log.info("end to end %s b=%d: %.0f audio-s per s", k, b, aps[k][str(b)])
    same = {}
    for method, retain in METHODS[:2]:
        toks = {}
        for loop in ("stock", "owned"):
            lalm.engine_options = EngineOptions(loop=loop)
            outs, _ = call(lalm, pool[: min(4, len(pool))], method, retain, 32 if not quick else 4, clock)
            toks[loop] = [o.token_ids for o in outs]
        lalm.engine_options = EngineOptions()
        same[_key(method, retain)] = toks["stock"] == toks["owned"]
    res.update(prefill_s=prefill, decode_ms_per_step=decode, decode_floor_ms=floor, audio_s_per_s=aps,
               same_tokens_as_generate=same, duration_s=time.time() - started)  # fmt: skip
    if peak:
        res["peak_gib"] = peak
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    (out / "bench.md").write_text(render(res, short, long))
    return res


def render(res: dict, short: int, long: int) -> str:
    enc = res["encoder_ms_per_chunk"]
    lines = [
        f"# Engine on {res['gpu']} ({res['date']}, torch {res['torch']}, transformers {res['transformers']}, "
        f"commit {res['commit'] or '?'})\n\n`python -m bench.gpu_engine` ({res['duration_s']:.0f} s). "
        f"{res['chunk_s']:g}-s chunks, {res['input_tokens']} input tokens; copy bandwidth "
        f"{res['peaks']['copy_tb_s']:.2f} TB/s.\n\n",
        f"Encoder per chunk: stock {enc['stock']:.1f} ms, one call per window length {enc['engine']:.1f} ms "
        f"({enc['stock'] / enc['engine']:.2f}x), max |diff| {enc['max_abs_diff']:.1e}.\n\n",
        f"Decode ms per step = (call of {long} - call of {short} tokens) / {long - short}:\n\n",
        "| method | batch | ms per step | bandwidth floor ms | ratio |\n|---|---|---|---|---|\n",
    ]
    for k, rows in res["decode_ms_per_step"].items():
        for b, ms in rows.items():
            fl = res["decode_floor_ms"][k][b]  # every measured row has its floor
            lines.append(f"| {k} | {b} | {ms:.2f} | {fl:.2f} | {ms / fl:.1f}x |\n")
    lines.append(f"\nEnd to end, {res['new_tokens']} new tokens per chunk (forced):\n\n| method | batch | audio s per s |"
                 "\n|---|---|---|\n")  # fmt: skip
    for k, rows in res["audio_s_per_s"].items():
        for b, v in rows.items():
            lines.append(f"| {k} | {b} | {v:.0f} |\n")
    lines.append(f"\nSame tokens as transformers' generate: {res['same_tokens_as_generate']}.\n")
    return "".join(lines)


def _gpu_key(name: str) -> str:
    """The bench.cost.GPUS row whose key is in the device name ("l40s" is listed before "l4"), else "cpu"."""
    from bench.cost import GPUS

    low = name.lower()
    return next((k for k in GPUS if k in low), "cpu")


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=5).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return ""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_engine", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--quick", action="store_true", help="toy sizes on the CPU (checks the script, not the GPU)"
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    res = run(args.out, args.quick)
    print((args.out / "bench.md").read_text())
    return 0 if all(res["same_tokens_as_generate"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
