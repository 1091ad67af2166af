"""Choosing retain from data: the table and recommendation rules (score kept against reference answers, agreement
without them), --retain-from's checks, and jobs.tune on a small tiny-synth archive whose recommendation jobs.run
--retain-from then uses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import pytest

from pipeline.cli import parse_run_args
from pipeline.options import UsageError
from pipeline.tune import VALIDATION, TuneResult, format_table, recommend, score_rows, tune_table

REPO = Path(__file__).resolve().parents[1]


def _row(i, method, retain, text, task="qa", prefill=1.0, kv=100):
    return dict(id=f"c{i}", chunk_index=0, method=method, retain=retain, status="ok", task=task, text=text,
                prefill_s=prefill, kv_bytes_kept=kv)  # fmt: skip


def test_table_compares_each_retain_with_vanilla_chunk_by_chunk():
    rows = [_row(i, "vanilla", 1.0, t, prefill=2.0, kv=200) for i, t in enumerate(["a", "b", "c", "d"])]
    rows += [_row(i, "headrouter", 0.5, t, kv=100) for i, t in enumerate(["a", "b", "c", "x"])]
    rows += [_row(i, "headrouter", 0.2, t, prefill=0.5, kv=50) for i, t in enumerate(["x", "b", "y", "z"])]
    rows.append(
        dict(_row(9, "headrouter", 0.2, "q"), status="error")
    )  # no vanilla partner, an error: left out
    table = tune_table(rows, (0.2, 0.5), resamples=500)
    assert [r["retain"] for r in table] == [0.5, 0.2]  # highest first
    assert [r["chunks"] for r in table] == [4, 4]
    assert [r["agreement"] for r in table] == [0.75, 0.25]
    assert table[0]["low"] <= 0.75 <= table[0]["high"]
    assert [r["kv_kept"] for r in table] == [0.5, 0.25]
    assert [r["prefill_s"] for r in table] == [1.0, 0.5] and table[0]["vanilla_prefill_s"] == 2.0


def test_recommendation_is_the_lowest_retain_whose_lower_bound_meets_the_target():
    table = [
        dict(retain=0.9, agreement=1.0, low=0.99, high=1.0),
        dict(retain=0.5, agreement=0.99, low=0.981, high=1.0),
        dict(retain=0.4, agreement=0.99, low=0.97, high=1.0),  # mean above, bound below: not enough
        dict(retain=0.2, agreement=0.9, low=0.85, high=0.95),
    ]
    rec = recommend(table, 0.98)
    assert (rec["retain"], rec["met"], rec["low"]) == (0.5, True, 0.981)
    assert recommend(table, 0.999) == dict(retain=1.0, met=False, target=0.999, target_on="agreement",
                                          agreement=None, low=None, high=None, score_kept=None, kept_low=None,
                                          kept_high=None)  # fmt: skip


def _graded_sample():
    """40 chunks whose answer is "a"; vanilla is right on 20 and wrong ("b") on 20. Retain 0.7 changes nothing;
    0.5 changes only the wrong answers (to "c": still wrong); 0.3 also breaks 8 right ones."""
    refs = {f"c{i}": dict(answer="a", choices=["a", "b", "c"]) for i in range(40)}
    vanilla = ["a"] * 20 + ["b"] * 20
    texts = {0.7: vanilla, 0.5: ["a"] * 20 + ["c"] * 20, 0.3: ["a"] * 12 + ["b"] * 8 + ["c"] * 20}
    rows = [dict(_row(i, "vanilla", 1.0, t), last=True) for i, t in enumerate(vanilla)]
    for retain, ts in texts.items():
        rows += [dict(_row(i, "headrouter", retain, t), last=True) for i, t in enumerate(ts)]
    return rows, refs


def test_with_references_the_score_kept_bound_picks_the_retain_where_agreement_would_not():
    rows, refs = _graded_sample()
    assert score_rows(rows, refs) == 40
    table = tune_table(rows, (0.7, 0.5, 0.3), resamples=500)
    by = {r["retain"]: r for r in table}
    # retain 0.5: half the answers changed (agreement 0.5) but only wrong ones: every point of score kept
    assert (by[0.5]["agreement"], by[0.5]["score_kept"], by[0.5]["kept_low"]) == (0.5, 1.0, 1.0)
    assert (by[0.5]["scored"], by[0.5]["score"], by[0.5]["vanilla_score"]) == (40, 0.5, 0.5)
    assert by[0.3]["score_kept"] == 0.6 and by[0.3]["kept_high"] < 0.9  # 12 of vanilla's 20 right answers
    on_quality, on_agreement = recommend(table, 0.9, "quality"), recommend(table, 0.9, "agreement")
    assert (on_quality["retain"], on_quality["target_on"], on_quality["score_kept"]) == (0.5, "quality", 1.0)
    assert (on_agreement["retain"], on_agreement["target_on"], on_agreement["agreement"]) == (
        0.7,
        "agreement",
        1.0,
    )


def test_only_chunks_that_are_whole_sources_with_an_answer_are_scored():
    rows, refs = _graded_sample()
    rows[0]["last"] = False  # c0's vanilla chunk: the first of several, its source's answer does not apply
    del refs["c1"]
    assert score_rows(rows, refs) == 38
    assert rows[0]["score"] is None and rows[1]["score"] is None and rows[2]["score"] == 1.0
    table = tune_table(rows, (0.5,), resamples=100)
    assert (table[0]["scored"], table[0]["chunks"]) == (38, 40)


def test_without_references_the_rule_is_agreement_as_before_and_the_output_says_so():
    rows, _ = _graded_sample()  # no refs: no row has a score
    assert score_rows(rows, {}) == 0
    table = tune_table(rows, (0.7, 0.5, 0.3), resamples=500)
    assert all(r["scored"] == 0 and r["score_kept"] is None for r in table)
    rec = recommend(table, 0.9)  # the default rule: today's
    assert (rec["retain"], rec["target_on"]) == (0.7, "agreement")
    rec.update(rule_reason="no reference answers (a manifest with an 'answer' per row gives them)")
    text = format_table(TuneResult(table, rec, 40, "out"))
    assert "score kept" not in text.splitlines()[0]  # no empty quality columns
    assert "rule: --target-on agreement, the lowest retain whose 95% lower bound of agreement" in text
    assert "no reference answers" in text
    assert "conservative stand-in for the quality kept" in text and "0.940 at 0.7 kept 99.7%" in text
    assert "recommended retain: 0.7 (agreement 1.000" in text


def test_the_quoted_validation_is_the_committed_one():
    relation = json.loads((REPO / "results" / "shadow-tiny-synth" / "validation.json").read_text())[
        "relation"
    ]
    shipped = {r["retain"]: r for r in relation if r["family"] == "all"}
    for retain, agreement, kept in VALIDATION:
        assert round(shipped[retain]["agreement"], 3) == agreement
        assert round(shipped[retain]["share_of_vanilla"], 3) == kept
        assert agreement < kept  # what "conservative" says
    assert "0.940 (0.922-0.958)" in (REPO / "docs" / "shadow.md").read_text()


def test_score_kept_is_a_paired_bootstrap_of_the_ratio():
    from quality.metrics import score_kept

    share, lo, hi = score_kept([1, 1, 0, 0.5], [1, 1, 1, 0.5], resamples=500)
    assert share == 2.5 / 3.5 and lo <= share <= hi <= 1.0
    assert score_kept([1, 1], [1, 1]) == (1.0, 1.0, 1.0)  # paired: same draw for both, so no spread
    assert score_kept([1], [0]) == (None, None, None) and score_kept([], []) == (None, None, None)


def test_target_on_quality_needs_answers_and_bad_answers_are_one_line_errors(tmp_path, capsys):
    from jobs.tune import main as tune_main

    shutil.copytree(REPO / "examples" / "synth", tmp_path / "a")
    rows = [json.loads(line) for line in (tmp_path / "a" / "demo.jsonl").read_text().splitlines()]
    cases = [
        ([{k: v for k, v in r.items() if k != "answer"} for r in rows], "--target-on quality needs reference answers: 12 of 12"),
        ([dict(r, answer="banana") if r.get("choices") else r for r in rows], "reference answer of 01-name.flac: answer 'banana' is not one of the choices"),
    ]  # fmt: skip
    for n, (manifest, message) in enumerate(cases):
        path = tmp_path / "a" / f"m{n}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in manifest))
        argv = [
            "--input",
            str(path),
            "--output",
            str(tmp_path / "t"),
            "--model",
            "tiny-synth",
            "--task",
            "qa",
        ]
        assert tune_main([*argv, "--sample", "12", "--target-on", "quality"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert not (tmp_path / "t").exists()  # refused before any model ran


def test_manifest_answers_reach_the_sources(tmp_path):
    import pyarrow.fs as pafs

    from pipeline.sources import list_sources

    path = tmp_path / "m.jsonl"
    path.write_text(
        '{"audio": "a.wav", "answer": "emma"}\n{"audio": "b.wav", "answer": ""}\n{"audio": "c.wav"}\n'
    )
    assert [s.answer for s in list_sources(str(path), pafs.LocalFileSystem())] == ["emma", None, None]


def _write(tmp_path, obj) -> str:
    path = tmp_path / f"recommendation-{len(list(tmp_path.iterdir()))}.json"
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


def test_retain_from_reads_the_recommendation_and_checks_it(tmp_path):
    args = ["--input", "in", "--output", "out", "--model", "tiny-synth"]
    good = _write(tmp_path, {"retain": 0.3, "model": "tiny-synth", "method": "headrouter"})
    assert parse_run_args([*args, "--retain-from", good]).opts.prune.retain == 0.3
    assert parse_run_args(args).opts.prune.retain == 0.6  # the default without either flag
    cases = [
        ([*args, "--retain-from", good, "--retain", "0.5"], "--retain or --retain-from, not both"),
        ([*args, "--retain-from", str(tmp_path / "missing.json")], "cannot read it"),
        ([*args, "--retain-from", _write(tmp_path, "{not json")], "not JSON"),
        ([*args, "--retain-from", _write(tmp_path, {"retain": 1.5})], "no retain in"),
        ([*args, "--retain-from", _write(tmp_path, [0.3])], "no retain in"),
        (
            [*args, "--retain-from", _write(tmp_path, {"retain": 0.3, "model": "qwen2.5-omni-3b"})],
            "tuned for model 'qwen2.5-omni-3b', not --model 'tiny-synth'",
        ),
        (
            [*args, "--method", "fastv", "--retain-from", _write(tmp_path, {"retain": 0.3, "method": "headrouter"})],
            "tuned for method 'headrouter', not --method 'fastv'",
        ),
        (  # a retain measured under one budget rule means another share of tokens under the other
            [*args, "--budget", "adaptive", "--retain-from", good],
            "tuned for budget 'fixed', not --budget 'adaptive'",
        ),
        (
            [*args, "--retain-from", _write(tmp_path, {"retain": 0.3, "budget": "adaptive"})],
            "tuned for budget 'adaptive', not --budget 'fixed'",
        ),
    ]  # fmt: skip
    for argv, message in cases:
        with pytest.raises(UsageError, match=message.replace("(", r"\(")) as e:
            parse_run_args(argv)
        assert "\n" not in str(e.value)


def test_nightly_takes_retain_from_and_shadow_fraction(tmp_path):
    from jobs.nightly import parse_args

    good = _write(tmp_path, {"retain": 0.4, "model": "tiny-random", "method": "headrouter"})
    opts, _ = parse_args(
        ["--input", "in", "--output", "out", "--retain-from", good, "--shadow-fraction", "0.02"]
    )
    assert (opts.run.prune.retain, opts.run.shadow_fraction) == (0.4, 0.02)


def test_validation_against_reference_answers(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from quality.tune_check import holdout_check, relation_table, scored_rows

    manifest = tmp_path / "m.jsonl"
    refs = [
        ("a", "semantic", "emma"),
        ("b", "semantic", "oscar"),
        ("c", "acoustic", "tone"),
        ("d", "acoustic", "siren"),
    ]
    manifest.write_text("".join(json.dumps(dict(id=i, category=c, answer=ans, choices=[ans, "x"], task="name")) + "\n"
                                for i, c, ans in refs))  # fmt: skip
    texts = {"vanilla": ["emma", "oscar", "tone", "x"], 0.5: ["emma", "x", "tone", "siren"]}
    rows = [dict(_row(0, "vanilla", 1.0, t), id=i) for (i, _, _), t in zip(refs, texts["vanilla"])]
    rows += [dict(_row(0, "headrouter", 0.5, t), id=i) for (i, _, _), t in zip(refs, texts[0.5])]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "chunks.parquet")
    scored = scored_rows(tmp_path, manifest)
    table = {r["family"]: r for r in relation_table(scored)}
    # semantic: b drifts from right to wrong; acoustic: d drifts from wrong to right
    assert (table["semantic"]["agreement"], table["semantic"]["score_change"]) == (0.5, -0.5)
    assert (table["acoustic"]["agreement"], table["acoustic"]["score_change"]) == (0.5, 0.5)
    assert (table["all"]["agreement"], table["all"]["score_change"], table["all"]["share_of_vanilla"]) == (
        0.5,
        0,
        1,
    )
    check = holdout_check(scored, 0.5, 0.98)
    assert (check["share_of_vanilla"], check["kept"], check["chunks"]) == (1.0, True, 4)


@pytest.mark.slow
def test_tune_on_tiny_synth_writes_a_recommendation_that_jobs_run_uses(tmp_path, capsys):
    from jobs.run import main as run_main
    from jobs.tune import main as tune_main

    archive = tmp_path / "archive"
    shutil.copytree(REPO / "examples" / "synth", archive)
    tuned = tmp_path / "tune"
    common = ["--model", "tiny-synth", "--task", "qa", "--workers", "1", "--max-new-tokens", "8"]
    argv = ["--input", str(archive / "demo.jsonl"), "--output", str(tuned), "--sample", "6"]
    assert tune_main([*argv, "--retain", "0.9", "0.3", "0.05", "--target", "0.5", *common]) == 0
    printed = capsys.readouterr().out
    rec = json.loads((tuned / "recommendation.json").read_text())
    table = json.loads((tuned / "table.json").read_text())
    assert [r["retain"] for r in table["rows"]] == [0.9, 0.3, 0.05] and table["chunks"] == rec["chunks"] == 6
    assert (rec["model"], rec["method"], rec["task"], rec["budget"]) == (
        "tiny-synth",
        "headrouter",
        "qa",
        "fixed",
    )
    assert rec["retain"] in (0.9, 0.3, 0.05, 1.0) and f"recommended retain: {rec['retain']:g}" in printed
    # the demo manifest has an answer per row: the score kept decides, agreement is reported beside it
    assert (rec["target_on"], rec["scored_chunks"], table["target_on"]) == ("quality", 6, "quality")
    assert all(r["scored"] == 6 and r["score_kept"] is not None for r in table["rows"])
    assert "rule: --target-on quality" in printed and "--target-on agreement would recommend" in printed
    # the sample is seeded: the same chunks again
    chunks = duckdb.sql(f"SELECT DISTINCT id FROM '{tuned}/chunks.parquet' ORDER BY id").fetchall()
    assert len(chunks) == 6

    out = tmp_path / "out"
    run = ["--input", str(archive / "demo.jsonl"), "--output", str(out), "--run-id", "r1"]
    assert run_main([*run, "--retain-from", str(tuned / "recommendation.json"), *common]) == 0
    retains = duckdb.sql(f"SELECT DISTINCT retain FROM '{out}/files/**/*.parquet'").fetchall()
    assert retains == [(rec["retain"],)]
    assert json.loads((out / "runs" / "r1.json").read_text())["options"]["prune"]["retain"] == rec["retain"]
