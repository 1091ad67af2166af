"""Benchmark metrics (hand-computed), committed table == recomputation from its per-sample file, calibration."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from quality.eval import read_samples, write_reports
from quality.metrics import macro_f1, summarize

RESULTS = Path(__file__).resolve().parents[1] / "results" / "tiny-synth"


def _rows(method, retain, digits_scores, event_preds):
    rows = [
        {"id": f"d{i}", "task": "digits", "category": "semantic", "method": method, "retain": retain,
         "answer": "one two", "prediction": "", "score": s, "prefill_s": 0.01, "kv_bytes_full": 100,
         "kv_bytes_kept": int(100 * retain)}
        for i, s in enumerate(digits_scores)
    ]  # fmt: skip
    for i, (gold, pred) in enumerate(zip(["tone", "tone", "chirp"], event_preds)):
        rows.append(
            {"id": f"e{i}", "task": "event", "category": "acoustic", "method": method, "retain": retain,
             "answer": gold, "prediction": pred, "score": float(gold == pred), "prefill_s": 0.02,
             "kv_bytes_full": 100, "kv_bytes_kept": int(100 * retain)}
        )  # fmt: skip
    return rows


def test_macro_f1_by_hand():
    # tone: tp 1, fp 0, fn 1 -> 2/3; chirp: tp 1, fp 1, fn 0 -> 2/3
    assert macro_f1(["tone", "chirp", "chirp"], ["tone", "tone", "chirp"]) == pytest.approx(2 / 3)
    # a prediction outside the classes is a miss and adds no class
    assert macro_f1(["siren", "tone."], ["tone", "tone"]) == pytest.approx(2 / 3)
    assert macro_f1(["tone"], ["tone"]) == 1.0


def test_summary_is_percent_of_vanilla_per_task_then_averaged():
    samples = _rows("vanilla", 1.0, [1.0, 0.5], ["tone", "chirp", "chirp"])
    samples += _rows("frame", 0.4, [0.5, 0.5], ["tone", "tone", "tone"])
    table = {r["method"]: r for r in summarize(samples, resamples=200)}
    assert table["vanilla"]["tasks"] == {"digits": pytest.approx(75.0), "event": pytest.approx(200 / 3)}
    assert table["vanilla"]["avg_pct_vanilla"] == pytest.approx(100.0)
    # frame: digits 50 (2/3 of 75); event F1 tone 0.8, chirp 0 -> 40 (0.6 of 66.7)
    assert table["frame"]["tasks"]["event"] == pytest.approx(40.0)
    assert table["frame"]["avg_pct_vanilla"] == pytest.approx(100 * (2 / 3 + 0.6) / 2)
    assert table["frame"]["ci_low"] <= table["frame"]["avg_pct_vanilla"] <= table["frame"]["ci_high"]
    assert table["frame"]["kv_fraction"] == pytest.approx(0.4)
    assert table["vanilla"]["ci_low"] == table["vanilla"]["ci_high"] == pytest.approx(100.0)


def test_summary_refuses_configs_on_different_samples():
    samples = _rows("vanilla", 1.0, [1.0, 0.5], ["tone", "chirp", "chirp"])
    samples += _rows("frame", 0.4, [0.5], ["tone", "tone", "tone"])
    with pytest.raises(ValueError, match="differ"):
        summarize(samples, resamples=10)


def test_reports_round_trip_through_the_samples_file(tmp_path):
    samples = _rows("vanilla", 1.0, [1.0, 0.5], ["tone", "chirp", "chirp"]) + _rows(
        "frame", 0.4, [0.5, 0.5], ["tone", "tone", "tone"]
    )
    table = write_reports(samples, tmp_path, resamples=50)
    for name in ("samples.csv.gz", "table.csv", "table.md", "pareto.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert summarize(read_samples(tmp_path / "samples.csv.gz"), resamples=50) == table


@pytest.mark.skipif(not (RESULTS / "samples.csv.gz").exists(), reason="no committed tiny-synth results")
def test_committed_table_matches_its_per_sample_results():
    info = json.loads((RESULTS / "command.json").read_text())
    table = summarize(
        read_samples(RESULTS / "samples.csv.gz"), resamples=info["resamples"], seed=info["seed"]
    )
    with open(RESULTS / "table.csv", newline="") as f:
        committed = list(csv.DictReader(f))
    assert len(committed) == len(table)
    for got, row in zip(table, committed):
        assert (row["method"], float(row["retain"])) == (got["method"], got["retain"])
        for task, value in got["tasks"].items():
            assert float(row[task]) == pytest.approx(value, abs=0.006)
        for key in ("avg_pct_vanilla", "ci_low", "ci_high"):
            assert float(row[key]) == pytest.approx(got[key], abs=0.006)


def test_headroom_recovered_and_paired_difference_by_hand():
    from quality.headroom import headroom_table, paired_difference

    events = ["tone", "tone", "chirp"]  # all correct: event F1 100 for every method
    samples = (
        _rows("vanilla", 1.0, [1.0, 1.0, 1.0], events)
        + _rows("headrouter-norouter", 0.4, [0.5, 0.5, 0.5], events)  # digits 50% of vanilla -> avg 75
        + _rows("headrouter-oracle", 0.4, [1.0, 1.0, 1.0], events)  # avg 100
        + _rows("headrouter", 0.4, [0.75, 0.75, 0.75], events)  # avg 87.5
    )
    rows = headroom_table(summarize(samples, resamples=50), samples, resamples=50)
    assert [(r["router"], r["retain"]) for r in rows] == [("headrouter", 0.4)]
    assert rows[0]["headroom"] == pytest.approx(25.0) and rows[0]["recovered"] == pytest.approx(0.5)
    assert paired_difference(samples, "headrouter", "headrouter", 0.4, 50) == (0.0, 0.0, 0.0)
    d, lo, hi = paired_difference(samples, "headrouter-oracle", "headrouter", 0.4, 50)
    assert d == pytest.approx(12.5) and lo == pytest.approx(12.5) and hi == pytest.approx(12.5)
