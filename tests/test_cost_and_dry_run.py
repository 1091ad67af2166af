"""The cost model's arithmetic by hand, and `jobs.run --dry-run` on a real folder (durations from headers)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import soundfile as sf

from bench.cost import GPUS, SHAPES, kv_bytes_per_token, text_params, throughput
from bench.flops import OMNI_3B_TEXT
from pipeline.dryrun import plan_archive
from pipeline.options import RunOptions

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_decode_reads_the_3b_weights_and_a_kv_cache_of_36_kb_per_token():
    # 36 layers x (q 2048x2048 + k, v 2048x256 + o 2048x2048 + MLP 3 x 2048x11008) + lm_head 2048 x 151936
    per_layer = 2048 * 2048 * 2 + 2 * 2048 * 256 + 3 * 2048 * 11008
    assert text_params(OMNI_3B_TEXT) == 36 * per_layer + 2048 * 151936  # ~3.09e9: ~6.2 GB in bf16
    assert kv_bytes_per_token(OMNI_3B_TEXT) * 36 == 36 * 1024  # 2 KV heads x 128 x (k, v) x 2 bytes per layer


def test_batching_and_pruning_raise_throughput_the_way_the_roofline_says():
    shape, gpu = SHAPES["qwen2.5-omni-3b"], GPUS["h100"]
    one = throughput(shape, gpu, 300, 1.0, 1)
    many = throughput(shape, gpu, 300, 1.0, 64)
    pruned = throughput(shape, gpu, 300, 0.4, 64)
    assert one["decode_tokens"] == 900 and one["batch"] == 1
    # batch 1: one step reads ~6.2 GB of weights plus one cache, at 70% of 3.35 TB/s
    weights = text_params(OMNI_3B_TEXT) * 2
    assert one["step_ms"] > weights / (3.35e12 * 0.7) * 1e3
    assert many["audio_hours_per_gpu_hour"] > 5 * one["audio_hours_per_gpu_hour"]
    assert pruned["audio_hours_per_gpu_hour"] > 1.5 * many["audio_hours_per_gpu_hour"]
    assert pruned["max_batch"] >= 2 * many["max_batch"]  # a pruned cache is less than half as big
    assert pruned["kv_gb_per_chunk"] < 0.5 * many["kv_gb_per_chunk"]


def test_dry_run_lists_durations_from_headers_and_writes_nothing(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name, seconds in (("a.wav", 2.0), ("b.flac", 7.5)):
        sf.write(folder / name, [0.0] * int(seconds * 16000), 16000)
    (folder / "broken.wav").write_bytes(b"RIFF nonsense")
    plan = plan_archive(RunOptions(input=str(folder), output=str(tmp_path / "out"), window_s=5.0))
    assert (plan.sources, plan.unknown) == (3, 1)
    assert plan.audio_s == pytest.approx(9.5)
    assert plan.chunk_s == [2.0, 5.0, 2.5]
    assert plan.audio_tokens == 25 * 2 + 125 + 63 - 1  # 25 tokens per second; 2.5 s -> 62
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "jobs.run", "--input", str(folder), "--output", str(out), "--dry-run"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "audio hours      0.003" in done.stdout and "1 without a readable duration" in done.stdout
    assert "Qwen2.5-Omni-3B" in done.stdout and "GPU-hours at batch 2 (" in done.stdout  # 2 chunks: batch 2
    assert not out.exists()
    bad = subprocess.run(
        [sys.executable, "-m", "jobs.run", "--input", str(folder), "--output", str(out), "--dry-run", "--gpu", "x"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.strip().startswith("jobs.run: error: --gpu must be one of")
