"""The cost model takes its efficiencies from the newest committed GPU results and says so; without any it says
its efficiencies are assumed, and so does `jobs.run --dry-run`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from bench.cost import ASSUMED, GPUS, SHAPES, efficiency, format_dry_run, throughput
from bench.flops import audio_encoder_flops, prefill_flops
from bench.gpu_results import RESULTS_DIR, load, load_latest
from pipeline.dryrun import plan_archive
from pipeline.options import RunOptions

REPO = Path(__file__).resolve().parents[1]
COMMITTED = RESULTS_DIR / "gpu-h200-2026-12" / "results.json"


def write(root: Path, name: str, **changes) -> Path:
    data = json.loads(COMMITTED.read_text()) | changes
    path = root / name / "results.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data))
    return path


def test_the_newest_results_win_and_name_their_gpu_and_date(tmp_path):
    write(tmp_path, "gpu-h200-2026-12", date="2026-12-04")
    newest = write(
        tmp_path, "gpu-a100-2027-01", gpu="NVIDIA A100-SXM4-80GB", gpu_key="a100", date="2027-01-15",
        decode_ms_per_step={"vanilla": {"1": 20, "64": 30}},
    )  # fmt: skip
    (tmp_path / "cpu-latest").mkdir()  # not a GPU folder: ignored
    assert load_latest(tmp_path).path == newest
    eff = efficiency(tmp_path)
    assert eff.measured and "NVIDIA A100-SXM4-80GB, 2027-01-15" in eff.source
    assert eff.describe().startswith("measured: ") and str(newest) in eff.describe()
    assert eff.decode_pruned == ()  # no pruned rows in that file: pruned estimates use the unpruned table
    assert eff.decode_at(8, pruned=True) == eff.decode_at(8, pruned=False)


def test_without_results_the_model_and_the_dry_run_say_assumed(tmp_path):
    assert load_latest(tmp_path) is None and efficiency(tmp_path) is ASSUMED
    folder = tmp_path / "in"
    folder.mkdir()
    sf.write(folder / "a.wav", [0.0] * 32000, 16000)
    plan = plan_archive(RunOptions(input=str(folder), output=str(tmp_path / "out")))
    text = format_dry_run(plan, "h200", 3.0, results_root=tmp_path)
    assert "efficiencies     assumed: prefill 50% (audio encoder) / 50% (LLM) of bf16 peak" in text
    assert "no GPU results committed" in text and text.splitlines()[-1].startswith("(assumed estimate")
    measured = format_dry_run(plan, "h200", 3.0)  # the committed results
    assert "efficiencies     measured: " in measured and "NVIDIA H200, 2026-12-04" in measured
    assert measured.splitlines()[-1].startswith("(measured estimate")


def test_a_malformed_results_file_is_an_error_naming_it(tmp_path):
    bad = write(tmp_path, "gpu-x", date="4 Dec 2026")
    with pytest.raises(ValueError, match=f"{bad}: date '4 Dec 2026' is not YYYY-MM-DD"):
        load_latest(tmp_path)
    shutil.rmtree(bad.parent)
    bad = write(tmp_path, "gpu-y", decode_ms_per_step={"vanilla": {"one": 100}})
    with pytest.raises(ValueError, match=r"decode_ms_per_step\['vanilla'\]\['one'\]"):
        load(bad)


def test_measured_efficiencies_by_hand_and_the_run_they_come_from():
    results = load(COMMITTED)
    d, eff = results.data, efficiency()
    shape, h200 = SHAPES["qwen2.5-omni-3b"], GPUS["h200"]
    # the encoder: 19.3 TFLOP per 300-s chunk in 0.30 s; the LLM: a 7,511-token prefill in 0.111 s
    assert eff.encoder_mfu == pytest.approx(audio_encoder_flops(shape.encoder, 300) / 0.300 / 989e12)
    assert eff.llm_mfu == pytest.approx(prefill_flops(shape.text, 7511, 7511, 2)["total"] / 0.111 / 989e12)
    assert 0.05 < eff.encoder_mfu < 0.1 and 0.4 < eff.llm_mfu < 0.5
    # the model run at the measured setting (128 new tokens forced) gives back the measured step and throughput
    for batch in (1, 64):
        row = throughput(shape, h200, 300, 1.0, batch, 3.0, 2, d["new_tokens"], eff)
        assert row["step_ms"] == pytest.approx(d["decode_ms_per_step"]["vanilla"][str(batch)], rel=0.01)
        assert row["audio_hours_per_gpu_hour"] == pytest.approx(
            d["audio_s_per_s"]["vanilla"][str(batch)], rel=0.1
        )
    one = throughput(shape, h200, 300, 0.4, 1, 3.0, 2, d["new_tokens"], eff)
    assert one["audio_hours_per_gpu_hour"] == pytest.approx(
        d["audio_s_per_s"]["headrouter-0.4"]["1"], rel=0.1
    )
    # between measured batches the efficiency is interpolated, outside them held
    assert eff.decode[0][1] < eff.decode_at(8, False) < eff.decode[-1][1] == eff.decode_at(256, False)
    # assumed efficiencies are what the roofline tables used before: 6-10x more optimistic at batch 64
    assumed = throughput(shape, h200, 300, 1.0, 64, efficiency=ASSUMED)["audio_hours_per_gpu_hour"]
    measured = throughput(shape, h200, 300, 1.0, 64, efficiency=eff)["audio_hours_per_gpu_hour"]
    assert 5 < assumed / measured < 10


def test_dry_run_prints_that_its_estimate_is_measured(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    sf.write(folder / "a.wav", [0.0] * 32000, 16000)
    done = subprocess.run(
        [sys.executable, "-m", "jobs.run", "--input", str(folder), "--output", str(tmp_path / "out"), "--dry-run",
         "--gpu", "h200"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "efficiencies     measured: " in done.stdout
    assert (
        "NVIDIA H200, 2026-12-04, torch 2.11.0+cu130 (bench/results/gpu-h200-2026-12/results.json)"
        in done.stdout
    )
    assert "(measured estimate" in done.stdout
