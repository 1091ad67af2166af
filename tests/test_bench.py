"""The benchmark: FLOP bound on hand-computed cases, the harness measures what it claims, and a
`--quick` smoke run of the whole CLI whose outputs have the promised structure. No timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.flops import (
    OMNI_3B_TEXT,
    EncoderShape,
    TextShape,
    audio_encoder_flops,
    prefill_flops,
    probe_flops,
    speedup_bound,
)

REPO = Path(__file__).resolve().parents[1]
# hidden 4, 2 heads of dim 2, 1 KV head, MLP 8, 2 layers, vocab 10
TOY = TextShape(hidden=4, intermediate=8, layers=2, heads=2, kv_heads=1, head_dim=2, vocab=10)


# ---- FLOP bound, worked by hand ------------------------------------------------------------------------------
def test_prefill_flops_by_hand():
    # per token and layer: q 2*4*4=32, k+v 2*2*4*2=32, o 2*4*4=32, MLP 3*2*4*8=192 -> 288
    # attention over T=3 (causal, 1+2+3=6 query-key pairs): 2 (QK, PV) * 2 FLOP * 2 heads * 2 dims * 6 = 96
    full = prefill_flops(TOY, seq_len=3, kept_len=None, layer=1)
    assert full == {"early": 3 * 288 + 96, "late": 3 * 288 + 96, "lm_head": 2 * 4 * 10, "total": 2000}
    # keep 2 of 3 after layer 1: late = 2*288 + 2*2*2*2*(1+2)=48
    pruned = prefill_flops(TOY, seq_len=3, kept_len=2, layer=1)
    assert pruned == {"early": 960, "late": 576 + 48, "lm_head": 80, "total": 1664}
    assert speedup_bound(TOY, 3, 2, layer=1) == pytest.approx(2000 / 1664)
    # the audio encoder adds to both sides and pulls the bound toward 1
    assert speedup_bound(TOY, 3, 2, layer=1, encoder_flops=336) == pytest.approx(2336 / 2000)


def test_prefill_flops_layer_split_and_quadratic_term():
    # M = L: pruning never happens, whatever kept_len says
    assert prefill_flops(TOY, 3, 1, layer=2)["total"] == prefill_flops(TOY, 3, None, layer=2)["total"]
    # attention is quadratic: doubling T more than doubles a layer's cost, by exactly the attention term
    one, two = (prefill_flops(TOY, t, None, layer=0)["late"] for t in (3, 6))
    assert two - 2 * one == 2 * (2 * 2 * 2 * (6 * 7 - 2 * 3 * 4))
    with pytest.raises(ValueError):
        prefill_flops(TOY, 3, 4)


def test_bound_at_real_3b_shape_is_sane():
    # 2 FLOP per weight per token: the 3B text decoder's non-embedding weights are ~2.78e9
    per_token = (
        prefill_flops(OMNI_3B_TEXT, 1000, None)["total"] - prefill_flops(OMNI_3B_TEXT, 999, None)["total"]
    )
    linear = per_token - 36 * 2 * 16 * 128 * 2 * 1000  # remove the attention increment at T=1000
    assert linear / 2 == pytest.approx(36 * (2 * 2048 * 2048 + 2 * 2048 * 256 + 3 * 2048 * 11008), rel=1e-9)
    bounds = [speedup_bound(OMNI_3B_TEXT, 7520, 20 + int(7500 * r), layer=2) for r in (0.7, 0.4, 0.1)]
    assert 1 < bounds[0] < bounds[1] < bounds[2] < 36 / 2  # never beyond L/M (layers < M always run full)


def test_probe_flops_by_hand():
    # 3 audio tokens through k_proj (4 -> 1 head x 2), 2 query tokens through q_proj (4 -> 2 x 2),
    # scores for 2 heads x 2 queries x 3 keys of dim 2
    assert (
        probe_flops(TOY, audio_tokens=3, query_tokens=2) == 2 * 4 * 2 * 3 + 2 * 4 * 4 * 2 + 2 * 2 * 2 * 2 * 3
    )


def test_audio_encoder_flops_by_hand():
    e = EncoderShape(d_model=2, layers=1, ffn=4, mel_bins=3, window_frames=2, output_dim=5)
    # 0.04 s: 4 mel frames -> 2 frames -> 1 window
    conv = 2 * 4 * 3 * 3 * 2 + 2 * 2 * 2 * 3 * 2  # conv1 (3 -> 2 channels, k=3) at 4 frames; conv2 at 2
    layer = 2 * (4 * 2 * 2 * 2 + 2 * 2 * 2 * 4) + 4 * 2 * 2 * 2  # two frames of q/k/v/o + MLP, one window
    proj = 2 * 1 * 2 * 5  # one pooled frame projected to 5
    assert audio_encoder_flops(e, 0.04) == conv + layer + proj == 372


# ---- the harness: the hooked stock model, KV bytes from the cache ----------------------------------------------
@pytest.fixture(scope="module")
def bench_model():
    from bench.prefill import BenchModel, scaled_3b_shape

    return BenchModel(scaled_3b_shape(hidden=64, layers=4))


def test_harness_prunes_through_the_engine_hooks(bench_model):
    t = bench_model.shape.text
    per_token_layer = 2 * t.kv_heads * t.head_dim * 4  # keys + values, float32
    van = bench_model.prefill(50, "vanilla", 1.0)
    hr = bench_model.prefill(50, "headrouter", 0.4)
    assert van["audio_tokens"] == hr["audio_tokens"] == 50 and hr["kept_audio"] == 20
    assert hr["kept_len"] == van["seq_len"] - 30 and van["kept_len"] == van["seq_len"]
    m = bench_model.shape.layer
    assert van["kv_bytes_kept"] == van["kv_bytes_full"] == per_token_layer * t.layers * van["seq_len"]
    assert hr["kv_bytes_kept"] == per_token_layer * (m * hr["seq_len"] + (t.layers - m) * hr["kept_len"])
    assert hr["prune_s"] > 0 and van["prune_s"] == 0
    # the benchmark's lm_head sees one position; fake audio embeddings differ from token to token
    import torch

    inputs = bench_model.inputs(50)
    with torch.inference_mode():
        out = bench_model.lalm.model(**inputs, use_cache=True)
        emb = bench_model.lalm.model.model.language_model.embed_tokens(inputs["input_ids"])[0]
    assert out.logits.shape[:2] == (1, 1)
    audio = inputs["input_ids"][0] == bench_model.lalm.token_ids.audio
    assert not torch.equal(emb[audio][0], emb[audio][1])


# ---- the CLI, --quick ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.bench", "all", "--quick", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "bench.json").read_text()), (out / "bench.md").read_text()


@pytest.mark.slow
def test_quick_prefill_structure(quick_run):
    res, _ = quick_run
    rows = res["prefill"]
    lengths = res["plan"]["lengths"]
    configs = {(r["method"], r["retain"]) for r in rows}
    assert configs == {("vanilla", 1.0)} | {
        (m, r) for m in ("random", "frame", "fastv", "dart", "headrouter") for r in (0.7, 0.4, 0.1)
    }
    assert len(rows) == 16 * len(lengths)
    for r in rows:
        assert (
            len(r["all_wall_s"])
            == len(r["all_cpu_s"])
            == res["plan"]["rounds"][lengths.index(r["audio_tokens"])]
        )
        assert r["kept_audio"] == int(r["audio_tokens"] * r["retain"] + 1e-9)
        assert r["kept_len"] == r["seq_len"] - r["audio_tokens"] + r["kept_audio"]
        assert r["efficiency"] == pytest.approx(r["speedup"] / r["flop_bound"])
        assert r["kv_bytes_kept"] <= r["kv_bytes_full"]
        if r["method"] == "vanilla":
            assert r["flop_bound"] == 1.0 and r["speedup"] == 1.0 and r["prune_hook_s"] == 0.0
        else:
            assert r["flop_bound"] > 1.0 and r["prune_hook_s"] > 0.0
    for n in lengths:  # the bound grows as retain falls, and is the same for every method at one retain
        b = {(r["method"], r["retain"]): r["flop_bound"] for r in rows if r["audio_tokens"] == n}
        assert b[("headrouter", 0.7)] < b[("headrouter", 0.4)] < b[("headrouter", 0.1)]
        assert b[("fastv", 0.4)] == b[("headrouter", 0.4)] == b[("random", 0.4)]
    fsb = res["full_size_bounds"]
    assert all(1 < f["end_to_end_bound"] < f["llm_bound"] for f in fsb)


@pytest.mark.slow
def test_quick_memory_pipeline_and_report(quick_run):
    res, md = quick_run
    mem = res["memory"]
    assert [(r["method"], r["retain"]) for r in mem] == [("vanilla", 1.0), ("headrouter", 0.4)]
    for r in mem:
        assert r["peak_bytes"] >= r["before_bytes"] > 0 and r["kind"] == "cpu_peak_rss"
        assert r["kv_bytes_kept"] <= r["kv_bytes_full"]
    pipe = res["pipeline"]
    assert [(r["actors"], r["files"]) for r in pipe["ray"]] == [(1, pipe["files"])]  # --quick: N only
    for r in pipe["ray"]:
        assert r["files_ok"] == r["files"] and r["files_failed"] == 0
        assert r["model_s_in_actors"] > 0
        assert r["audio_s"] == pytest.approx(pipe["model_alone"][r["inputs"]]["audio_s"], abs=0.01)
    assert pipe["model_alone"]["small"]["chunks"] == pipe["files"] and r["overhead_normalized"] is not None
    assert {r["format"] for r in res["stage_rtf"]} == {"mp3", "flac"}
    assert all(r["audio_s"] == pytest.approx(res["plan"]["rtf_file_s"], abs=0.05) for r in res["stage_rtf"])
    dm = res["decode_memory"]
    assert [r["minutes"] for r in dm] == list(res["plan"]["memory_minutes"])
    assert all(not r["errors"] and r["audio_s"] == pytest.approx(r["minutes"] * 60, abs=0.05) for r in dm)
    assert all(len(r["rss_after_chunk_mib"]) == r["chunks"] for r in dm)
    names = [
        t["target"] for t in res["targets"] if "batch" not in t["target"] and "one call" not in t["target"]
    ]
    assert len(names) == 6 and all(isinstance(t["met"], bool) for t in res["targets"] if t["target"] in names)
    for heading in ("## Targets", "## Prefill", "## Memory", "## Pipeline", "Analytical bounds at full size"):
        assert heading in md
    assert res["command"].startswith("python -m jobs.bench all --quick")


@pytest.mark.slow
def test_quick_batch_section(quick_run):
    res, md = quick_run
    b = res["batch"]
    eng = b["engine"]
    assert {(r["chunk_s"], r["method"], r["batch"]) for r in eng} == {
        (s, m, n) for s in (5.0, 20.0) for m in ("vanilla", "headrouter") for n in (1, 4)
    }
    assert all(r["same_as_batch_1"] and r["chunks"] == 4 and r["decode_tokens_per_s"] > 0 for r in eng)
    for s in (5.0, 20.0):  # a pruned call caches fewer bytes than the same call unpruned
        kv = {(r["method"], r["batch"]): r["kv_bytes_largest_call"] for r in eng if r["chunk_s"] == s}
        assert kv[("headrouter", 4)] < kv[("vanilla", 4)]
    p = b["pipeline"]
    assert p["same_outputs"] and p["serial"]["files_ok"] == p["batched"]["files_ok"] == 2
    assert [r["vanilla"] for r in b["budget"]] == [16, 16] and all(
        r["headrouter_0.4"] > 16 for r in b["budget"]
    )
    assert b["tiny_synth"]["same_outputs"]
    assert "## Batched generation" in md and any("one call over 8" in t["target"] for t in res["targets"])


@pytest.mark.slow
def test_quick_loop_section(quick_run):
    res, md = quick_run
    loop = res["loop"]
    rows = loop["decode"]
    assert {(r["method"], r["batch"], r["loop"]) for r in rows} == {
        (m, b, name) for m in ("vanilla", "headrouter") for b in (1, 2) for name in ("stock", "owned")
    }
    assert all(r["same_tokens_as_stock"] and r["ms_per_step"] > 0 for r in rows)
    assert all(r["speedup_vs_stock"] == 1.0 for r in rows if r["loop"] == "stock")
    enc = loop["encoder"]
    assert enc["max_abs_diff"] == 0.0 and enc["windows"] == 30 and enc["stock_s"] > 0
    assert "## Decode loop and encoder windows" in md


def test_gpu_engine_script_writes_results_the_cost_model_reads(tmp_path):
    """bench/gpu.sh's measurement, at toy size on the CPU: its results.json passes the cost model's loader."""
    from bench.gpu_engine import run
    from bench.gpu_results import load

    res = run(tmp_path, quick=True)
    loaded = load(tmp_path / "results.json")
    assert loaded.data["decode_ms_per_step"].keys() == {"vanilla", "headrouter-0.4"}
    assert set(res["audio_s_per_s"]) == {"vanilla", "headrouter-0.4", "fastv-0.4"}
    assert res["same_tokens_as_generate"] == {"vanilla": True, "headrouter-0.4": True}
    assert res["encoder_ms_per_chunk"]["max_abs_diff"] == 0.0
    assert "Same tokens as transformers' generate" in (tmp_path / "bench.md").read_text()
