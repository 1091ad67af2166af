"""Shadow runs: which chunks are shadowed, agreement on hand-made pairs, and the actor's shadow columns on the
real tiny model (pruned results unchanged by shadowing, shadow time kept apart, a failing shadow fails nothing)."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pytest

from headrouter.options import PruneOptions
from pipeline.cli import format_summary, parse_run_args
from pipeline.graph import SEGMENT_SCHEMA, worker_options
from pipeline.options import RunSummary, UsageError
from pipeline.sink import CHUNK_SCHEMA, FILE_SCHEMA, file_row
from quality.agreement import agreement, mean_interval
from tests.test_worker_batching import _Recorder, _segments
from workers.inference import InferenceWorker
from workers.options import WorkerOptions
from workers.shadow import shadowed


def test_shadowed_set_is_deterministic_and_close_to_the_fraction():
    pairs = [(f"s3://archive/meeting-{i}.wav", c) for i in range(2000) for c in range(10)]
    for fraction in (0.01, 0.05, 0.2, 0.5):
        picked = [p for p in pairs if shadowed(*p, fraction)]
        assert picked == [p for p in pairs if shadowed(*p, fraction)]  # a rerun shadows the same chunks
        assert abs(len(picked) / len(pairs) - fraction) < 0.01 + 0.05 * fraction
    small = {p for p in pairs if shadowed(*p, 0.05)}
    assert small <= {p for p in pairs if shadowed(*p, 0.2)}  # a larger fraction adds chunks, drops none
    assert not any(shadowed(*p, 0.0) for p in pairs[:100]) and all(shadowed(*p, 1.0) for p in pairs[:100])
    # the chunk index matters: a source is not shadowed all or nothing
    assert len({shadowed("one-source", c, 0.5) for c in range(50)}) == 2


@pytest.mark.parametrize(
    "task, pruned, unpruned, expected",
    [
        ("asr", "the cat sat on the mat", "the cat sat on the mat", 1.0),
        ("asr", "The cat, sat!", "the cat sat", 1.0),  # the benchmark's normalization
        ("asr", "the cat sat on a mat", "the cat sat on the mat", 1 - 1 / 6),  # one substitution in six
        ("asr", "the cat", "the cat sat on the mat", 1 - 4 / 6),  # four deletions
        ("asr", "a b c d e f g h", "x y", 0.0),  # WER 4.0, clipped to 0
        ("asr", "", "", 1.0),  # both empty agree
        ("asr", "words", "", 0.0),
        ("asr", "", "words", 0.0),
        ("asr", "3 1", "three one", 1.0),  # numerals spelled as the benchmark does
        ("qa", "Emma.", "emma", 1.0),
        ("qa", "emma", "oscar", 0.0),
        ("qa", "", "", 1.0),
        ("qa", "the emma", "emma", 0.0),  # equal after normalization or nothing
    ],
)
def test_agreement_on_hand_made_pairs(task, pruned, unpruned, expected):
    assert agreement(task, pruned, unpruned) == pytest.approx(expected, abs=1e-12)


def test_mean_interval():
    assert mean_interval([]) == (None, None, None)
    assert mean_interval([0.5]) == (0.5, 0.5, 0.5)
    mean, lo, hi = mean_interval([1.0] * 30 + [0.0] * 10, seed=3)
    assert mean == 0.75 and lo < 0.75 < hi and 0.55 < lo and hi < 0.9
    assert mean_interval([1.0] * 30 + [0.0] * 10, seed=3) == (mean, lo, hi)  # seeded


def _worker(method="headrouter", retain=0.6, **kw):
    prune = PruneOptions(method=method, retain=retain, layer=1)
    worker = InferenceWorker(
        WorkerOptions(model="tiny-random", prune=prune, max_new_tokens=4, **kw), CHUNK_SCHEMA
    )
    worker._metrics = _Recorder()
    return worker


def _spy(worker) -> list[tuple[str, list]]:
    calls = []
    generate = worker.lalm.generate

    def spy(audios, prompts, prune, **kw):
        outs = generate(audios, prompts, prune, **kw)
        calls.append((prune.method, outs))
        return outs

    worker.lalm.generate = spy
    return calls


PRUNED_COLUMNS = ("id", "status", "text", "audio_tokens", "kept_tokens", "alpha_semantic", "kv_bytes_kept")


def test_shadowed_run_keeps_the_pruned_results_and_adds_unpruned_ones():
    rows = _segments([1.0, 2.5, 0.7, 1.9, 3.0])
    plain = _worker(batch_size=8, retain=0.3).infer(rows)
    worker = _worker(batch_size=8, retain=0.3, shadow_fraction=1.0)
    calls = _spy(worker)
    got = worker.infer(rows)
    for a, b in zip(plain, got):
        assert {k: a.get(k) for k in PRUNED_COLUMNS} == {k: b.get(k) for k in PRUNED_COLUMNS}
    # one pruned call for the planned batch, then its shadowed rows in one unpruned call
    assert [(m, len(o)) for m, o in calls] == [("headrouter", 5), ("vanilla", 5)]
    vanilla = _worker(batch_size=8, method="vanilla", retain=1.0).infer(rows)
    assert [r["shadow_text"] for r in got] == [r["text"] for r in vanilla]
    for r in got:
        assert r["shadow_agreement"] == agreement("asr", r["text"], r["shadow_text"])
    # the shadow's time is its own: prefill_s / decode_s are the pruned call's, shadow_s the unpruned call's
    order = sorted(range(5), key=lambda i: -rows[i]["end_s"])  # the call's order: longest first
    pruned_outs, vanilla_outs = calls[0][1], calls[1][1]
    for k, i in enumerate(order):
        assert (
            got[i]["prefill_s"] == pruned_outs[k].prefill_s and got[i]["decode_s"] == pruned_outs[k].decode_s
        )
        assert got[i]["shadow_s"] == vanilla_outs[k].prefill_s + vanilla_outs[k].decode_s
    table = pa.Table.from_pylist(got, schema=CHUNK_SCHEMA)  # the columns exist in the chunk schema
    assert table.column("shadow_agreement").null_count == 0


def test_only_the_shadowed_chunks_get_shadow_columns():
    rows = _segments([1.0] * 12)
    for i, r in enumerate(rows):
        r["id"], r["chunk_index"] = "meeting.wav", i
    worker = _worker(batch_size=12, shadow_fraction=0.4)
    got = worker.infer(rows)
    expected = [shadowed("meeting.wav", i, 0.4) for i in range(12)]
    assert 0 < sum(expected) < 12
    assert [r.get("shadow_agreement") is not None for r in got] == expected
    assert all((r.get("shadow_text") is None) == (not e) for r, e in zip(got, expected))


def test_a_failing_shadow_leaves_the_chunk_ok_and_its_shadow_columns_null(caplog):
    rows = _segments([1.0, 2.0])
    worker = _worker(batch_size=4, shadow_fraction=1.0)
    generate = worker.lalm.generate

    def fail_unpruned(audios, prompts, prune, **kw):
        if prune.method == "vanilla":
            raise RuntimeError("shadow boom")
        return generate(audios, prompts, prune, **kw)

    worker.lalm.generate = fail_unpruned
    got = worker(pa.Table.from_pylist(rows, schema=SEGMENT_SCHEMA)).to_pylist()
    assert [r["status"] for r in got] == ["ok", "ok"] and all(r["text"] is not None for r in got)
    assert all(r["shadow_text"] is None and r["shadow_agreement"] is None for r in got)
    assert "shadow run of 2 chunks failed" in caplog.text


def test_vanilla_runs_shadow_nothing():
    worker = _worker(method="vanilla", retain=1.0, shadow_fraction=1.0)
    calls = _spy(worker)
    got = worker.infer(_segments([1.0, 2.0]))
    assert len(calls) == 1 and all(r.get("shadow_agreement") is None for r in got)


def test_files_row_holds_the_mean_agreement_of_its_shadowed_chunks():
    base = dict(run_id="r", attempt_id="a", id="x", source="x", status="ok", error="", end_s=1.0, last=False)
    chunks = [
        dict(base, chunk_index=0, shadow_agreement=1.0),
        dict(base, chunk_index=1),
        dict(base, chunk_index=2, shadow_agreement=0.5, last=True),
    ]
    now = datetime.now(UTC)
    assert file_row(chunks, now)["shadow_agreement"] == 0.75
    assert file_row([dict(c, shadow_agreement=None) for c in chunks], now)["shadow_agreement"] is None
    pa.Table.from_pylist([file_row(chunks, now)], schema=FILE_SCHEMA)


def test_shadow_fraction_flag_reaches_the_workers_and_the_summary_shows_agreement():
    request = parse_run_args(["--input", "in", "--output", "out", "--shadow-fraction", "0.02"])
    assert worker_options(request.opts).shadow_fraction == 0.02
    assert parse_run_args(["--input", "in", "--output", "out"]).opts.shadow_fraction == 0.0
    with pytest.raises(UsageError, match="--shadow-fraction must be in"):
        parse_run_args(["--input", "in", "--output", "out", "--shadow-fraction", "1.5"])
    text = format_summary(RunSummary("r", "out", shadow_chunks=40, shadow_agreement=(0.9512, 0.9, 0.98)))
    assert "shadow agreement" in text and "0.951 (95% CI 0.900-0.980, 40 chunks)" in text
    assert format_summary(RunSummary("r", "out")).splitlines()[-2].split()[-1] == "-"
