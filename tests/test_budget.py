"""Per-sample budgets (headrouter.budget): the rule, its calibration, floor/ceiling, batch independence, and
`fixed` bit-identical to the code before budgets existed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from headrouter import PruneOptions, load_lalm
from headrouter.budget import (
    BudgetRule,
    budget_bounds,
    budget_rule,
    calibrate_threshold,
    importance_shares,
    kept_fraction,
    mass_keep_count,
    retain_for_fraction,
)
from headrouter.budget_calibration import budget_table, collect_shares
from tests.test_engine import clip

REFERENCE = Path(__file__).parent / "fixtures" / "budget_fixed_reference.pt"


def test_mass_rule_keeps_the_fewest_tokens_that_reach_the_share():
    imp = torch.tensor([1.0, 5.0, 0.0, 3.0, 1.0])  # sorted: 5 3 1 1 0 -> shares .5 .8 .9 1 1
    assert mass_keep_count(imp, 0.5, 0, 5) == 1
    assert mass_keep_count(imp, 0.51, 0, 5) == 2
    assert mass_keep_count(imp, 0.85, 0, 5) == 3
    assert mass_keep_count(imp, 1.0, 0, 5) == 5
    assert mass_keep_count(imp, 0.85, 4, 5) == 4  # floor
    assert mass_keep_count(imp, 0.85, 0, 2) == 2  # ceiling
    # power 2 sharpens: 25 9 1 1 0 -> the top token alone holds 25/36 = 0.69 of the total
    assert mass_keep_count(imp, 0.6, 0, 5, power=2.0) == 1
    assert mass_keep_count(torch.zeros(4), 0.5, 0, 4) == 2  # no signal: every token alike


def test_bounds_are_exact_fractions_of_retain():
    assert budget_bounds(100, 0.4) == (10, 80)
    assert budget_bounds(100, 0.7) == (17, 100)  # the ceiling is at most every token
    assert budget_bounds(7, 0.1) == (0, 1)
    assert PruneOptions(retain=0.4, budget="adaptive").max_kept_fraction == pytest.approx(0.8)
    assert PruneOptions(retain=0.4).max_kept_fraction == 0.4
    assert PruneOptions(method="frame", retain=0.4, budget="adaptive").max_kept_fraction == 0.4  # unscored
    with pytest.raises(ValueError, match="budget"):
        PruneOptions(budget="greedy")


@pytest.mark.parametrize("retain", [0.1, 0.4, 0.7])
def test_floor_and_ceiling_hold_per_sample(retain):
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        na = int(torch.randint(1, 400, (1,), generator=gen))
        imp = torch.rand(na, generator=gen) ** float(
            torch.randint(1, 12, (1,), generator=gen)
        )  # flat to peaked
        for tau in (0.0, 0.3, 0.9, 0.999):
            k = BudgetRule(tau, retain, power=2.0).count(imp)
            low, high = budget_bounds(na, retain)
            assert low <= k <= high
            assert k <= int(
                np.floor(na * PruneOptions(retain=retain, budget="adaptive").max_kept_fraction + 1e-9)
            )


def test_calibrated_threshold_gives_the_requested_fraction():
    gen = np.random.default_rng(1)
    shares = []
    for _ in range(300):
        na = int(gen.integers(20, 2000))
        imp = torch.from_numpy(gen.random(na) ** gen.uniform(1, 20))
        shares.append(importance_shares(imp, 2.0).numpy())
    for retain in (0.1, 0.4, 0.7):
        tau, fraction = calibrate_threshold(shares, retain)
        assert fraction == pytest.approx(retain, abs=0.002)
        assert kept_fraction(shares, BudgetRule(tau, retain, 2.0)) == pytest.approx(fraction, abs=1e-12)


@pytest.fixture(scope="module")
def synth():
    torch.set_num_threads(1)
    return load_lalm("tiny-synth")


def _calibration_split():
    """24 clips of 0.3-12 s (tones over noise; tiny-synth answers them like any clip)."""
    lengths = np.random.default_rng(3).uniform(0.3, 12.0, size=24)
    return [
        {"_audio": clip(float(s), seed=i), "_prompt": ("transcribe the digits", "what is the sound ?")[i % 2]}
        for i, s in enumerate(lengths)
    ]


@pytest.mark.slow
def test_the_calibrated_engine_keeps_the_requested_mean_on_the_calibration_split(synth):
    rows = _calibration_split()
    shares = {m: collect_shares(synth, rows, m, power=2.0) for m in ("headrouter", "fastv")}
    dart = collect_shares(synth, rows[:3], "dart", power=2.0)  # DART counts by FastV's scores
    assert all(np.array_equal(a, b) for a, b in zip(dart, shares["fastv"]))
    table = budget_table(shares, rows, power=2.0)
    profiles = replace(synth.profiles(), budget=table)
    synth._profiles[None] = profiles  # what the model folder's file would hold after jobs.calibrate_budget
    try:
        for method in ("headrouter", "fastv", "dart", "headrouter-noprefilter"):
            for retain in (0.1, 0.4, 0.7):
                options = PruneOptions(method=method, retain=retain, budget="adaptive")
                kept = total = 0
                counts = []
                for row in rows:
                    _, rec = synth.prefill_logits(row["_audio"], row["_prompt"], options)
                    kept, total = kept + rec.kept_tokens, total + rec.audio_tokens
                    counts.append(rec.kept_tokens / rec.audio_tokens)
                    low, high = budget_bounds(rec.audio_tokens, retain)
                    assert low <= rec.kept_tokens <= high
                assert kept / total == pytest.approx(retain, abs=0.01), (method, retain)
                assert np.std(counts) > 0.01  # the counts really differ per sample
            # the matched retain reproduces a target on these clips
            r = retain_for_fraction(
                shares["fastv" if method == "dart" else "headrouter"], profiles, method, 0.3
            )
            assert kept_fraction(
                shares["fastv" if method == "dart" else "headrouter"], budget_rule(profiles, method, r)
            ) == pytest.approx(0.3, abs=0.01)
    finally:
        synth._profiles.pop(None)


@pytest.mark.slow
def test_a_sample_keeps_the_same_tokens_alone_and_in_any_batch(synth):
    rows = _calibration_split()
    table = budget_table(
        {"headrouter": collect_shares(synth, rows, "headrouter", power=2.0)}, rows, power=2.0
    )
    table["thresholds"]["fastv"] = table["thresholds"]["headrouter"]  # any threshold will do for this test
    synth._profiles[None] = replace(synth.profiles(), budget=table)
    try:
        audios = [clip(0.3, 1), clip(4.0, 2), clip(9.5, 3), clip(2.2, 4)]
        prompts = [
            "transcribe the digits",
            "what is the sound ?",
            "how many beeps ?",
            "transcribe the digits",
        ]
        for method in ("headrouter", "fastv", "dart"):
            options = PruneOptions(method=method, retain=0.4, budget="adaptive")
            alone = [synth.generate([a], [p], options, max_new_tokens=4)[0] for a, p in zip(audios, prompts)]
            for order in ([0, 1, 2, 3], [3, 2, 1, 0], [1, 3]):
                batch = synth.generate([audios[i] for i in order], [prompts[i] for i in order], options, 4)
                for i, out in zip(order, batch):
                    assert out.kept_index == alone[i].kept_index, (method, order, i)
                    assert out.token_ids == alone[i].token_ids
            fixed = [
                synth.generate([a], [p], replace(options, budget="fixed"), 1)[0].kept_tokens
                for a, p in zip(audios, prompts)
            ]
            assert [o.kept_tokens for o in alone] != fixed  # adaptive really changed the counts
    finally:
        synth._profiles.pop(None)


def test_adaptive_needs_a_budget_calibration(synth):
    bare = replace(synth.profiles(), budget=None)
    synth._profiles[None] = bare
    try:
        with pytest.raises(ValueError, match="jobs.calibrate_budget"):
            synth.prefill_logits(clip(1.0), "transcribe the digits", PruneOptions(budget="adaptive"))
    finally:
        synth._profiles.pop(None)


@pytest.mark.slow
def test_fixed_is_bit_identical_to_the_code_before_budgets(synth):
    """The reference holds prefill logits and kept indices from commit 6b5468a (before budgets), made by
    tests/fixtures/make_budget_reference.py with one torch thread."""
    ref = torch.load(REFERENCE)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        audios = [clip(0.3, 1), clip(4.0, 2), clip(9.5, 3)]
        prompts = ["transcribe the digits", "what is the sound ?", "how many beeps ?"]
        for key in sorted(k for k in ref if k.endswith("/keep")):
            method, retain, i, _ = key.split("/")
            for options in (
                PruneOptions(method=method, retain=float(retain)),
                PruneOptions(method=method, retain=float(retain), budget="fixed"),
            ):
                logits, rec = synth.prefill_logits(audios[int(i)], prompts[int(i)], options)
                assert torch.equal(rec.keep_audio, ref[key]), key
                assert torch.equal(logits, ref[key.replace("/keep", "/logits")]), key
    finally:
        torch.set_num_threads(threads)


def test_shipped_tiny_synth_profiles_hold_a_budget_calibration_that_round_trips():
    from headrouter.profiles import Profiles

    path = Path(__file__).parents[1] / "models" / "tiny-synth" / "headrouter_profiles.json"
    profiles = Profiles.load(path)
    assert Profiles.from_dict(profiles.to_dict()).budget == profiles.budget
    table = profiles.budget
    for key in ("headrouter", "fastv"):
        assert table["realized"][key][table["retains"].index(0.4)] == pytest.approx(0.4, abs=0.01)
        taus = [budget_rule(profiles, m, r).threshold for m in (key,) for r in (0.1, 0.4, 0.7)]
        assert taus == sorted(taus)  # more retain, a higher share
    assert budget_rule(profiles, "dart", 0.4) == budget_rule(profiles, "fastv", 0.4)
    assert budget_rule(profiles, "headrouter-noprefilter", 0.4) == budget_rule(profiles, "headrouter", 0.4)


def test_summary_rows_per_budget_with_the_measured_kept_fraction():
    from quality.metrics import summarize

    def rows(budget, kept):
        return [
            {"id": f"d{i}", "task": "digits", "category": "semantic", "method": "headrouter" if budget else "vanilla",
             "budget": budget or "fixed", "retain": 0.4 if budget else 1.0, "answer": "one", "prediction": "one",
             "score": 1.0, "audio_tokens": 100, "kept_tokens": k, "kv_bytes_full": 10, "kv_bytes_kept": 10,
             "prefill_s": 0.01}
            for i, k in enumerate(kept)
        ]  # fmt: skip

    table = summarize(
        rows(None, [100, 100]) + rows("fixed", [40, 40]) + rows("adaptive", [70, 10]), resamples=5
    )
    got = {(r["method"], r["budget"]): r["kept_fraction"] for r in table}
    assert got == {("vanilla", "fixed"): 1.0, ("headrouter", "fixed"): 0.4, ("headrouter", "adaptive"): 0.4}


def test_budget_flag_reaches_the_run_and_tune_options():
    from jobs.tune import parse_args
    from pipeline.cli import parse_run_args
    from pipeline.options import UsageError

    run = parse_run_args(["--input", "in", "--output", "out", "--budget", "adaptive", "--retain", "0.4"])
    assert run.opts.prune.budget == "adaptive" and run.opts.prune.max_kept_fraction == pytest.approx(0.8)
    assert parse_run_args(["--input", "in", "--output", "out"]).opts.prune.budget == "fixed"
    assert (
        parse_args(["--input", "in", "--output", "out", "--budget", "adaptive"]).run.prune.budget
        == "adaptive"
    )
    with pytest.raises(UsageError):
        parse_run_args(["--input", "in", "--output", "out", "--budget", "greedy"])


def test_report_shows_the_share_kept_per_task_and_the_budget():
    from monitoring.report import summary

    chunks = [
        {"status": "ok", "task": "qa", "audio_tokens": 100, "kept_tokens": 70, "model": "m", "method": "headrouter",
         "budget": "adaptive"},
        {"status": "ok", "task": "qa", "audio_tokens": 300, "kept_tokens": 90, "model": "m", "method": "headrouter",
         "budget": "adaptive"},
        {"status": "ok", "task": "asr", "audio_tokens": 50, "kept_tokens": 20, "model": "m", "method": "headrouter"},
    ]  # fmt: skip
    rows = dict(summary(chunks, []))
    assert rows["audio tokens kept per task"] == "asr 40.0 %, qa 40.0 %"
    assert rows["audio tokens kept"] == "40.0 %"
    assert "m/headrouter (adaptive budget)" in rows["models / methods"]
