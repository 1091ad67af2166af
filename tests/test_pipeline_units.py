"""Pipeline stages without Ray: sources, decoding, chunking, the sink's commit protocol, the reading rule, the actor UDF."""

from __future__ import annotations

import json
import os
import tracemalloc
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyarrow import fs as pafs

from headrouter.options import PruneOptions
from pipeline.chunking import chunk_stream, quiet_cut
from pipeline.cli import parse_run_args
from pipeline.decode import DecodeError, DecodeLimits, decode_stream
from pipeline.graph import SEGMENT_SCHEMA, decode_and_chunk, source_items
from pipeline.options import RunOptions, UsageError
from pipeline.resume import completed_ids, read_results
from pipeline.sink import CHUNK_SCHEMA, ResultSink, write_table_atomic
from pipeline.sources import Source, list_sources
from tests.fixtures.audio import bursts, encode, write_bursts, write_wav
from workers.inference import InferenceWorker
from workers.options import WorkerOptions

LOCAL = pafs.LocalFileSystem()
SR = 16000


def decode_all(path, **limits) -> np.ndarray:
    return np.concatenate(list(decode_stream(LOCAL, str(path), DecodeLimits(**limits))))


# --- sources ---------------------------------------------------------------------------------------------------


def test_folder_listing_is_sorted_and_skips_non_audio(tmp_path):
    for name in ["b.wav", "a.flac", "sub/c.MP3", ".hidden.wav", "notes.txt", "sub/d.m4a"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    ids = [s.id for s in list_sources(str(tmp_path), LOCAL)]
    assert ids == [str(tmp_path / n) for n in ["a.flac", "b.wav", "sub/c.MP3", "sub/d.m4a"]]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_manifest_formats(tmp_path, fmt):
    rows = [
        {"audio": "x/one.wav", "id": "one", "question": "Who speaks?", "choices": '["a", "b"]'},
        {"audio": str(tmp_path / "two.wav"), "id": "", "question": "", "choices": ""},
        {"audio": "https://example.invalid/three.wav", "id": "three", "question": "", "choices": ""},
    ]
    path = tmp_path / f"m.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "csv":
        import csv

        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    got = list(list_sources(str(path), LOCAL, question="default?"))
    assert [s.id for s in got] == ["one", str(tmp_path / "two.wav"), "three"]
    assert got[0].uri == str(tmp_path / "x" / "one.wav")  # relative to the manifest's folder
    assert got[0].question == "Who speaks?" and got[0].choices == ("a", "b")
    assert got[1].question == "default?" and got[1].error == ""
    assert got[2].error.startswith("forbidden:")


def test_manifest_duplicate_ids_and_bad_lines_are_usage_errors(tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_text('{"audio": "a.wav"}\n{"audio": "a.wav"}\n')
    with pytest.raises(UsageError, match="duplicate id"):
        list(list_sources(str(m), LOCAL))
    m.write_text('{"audio": "a.wav"}\nnot json\n')
    with pytest.raises(UsageError, match="line 2"):
        list(list_sources(str(m), LOCAL))
    with pytest.raises(UsageError, match="not found"):
        list(list_sources(str(tmp_path / "nope"), LOCAL))


def test_options_validation():
    RunOptions(input="x", output="y").validate()
    for bad in [dict(task="tts"), dict(prune=PruneOptions(retain=0)), dict(workers=(2, 1)), dict(run_id="../x"),
                dict(task="qa"), dict(prune=PruneOptions(method="headrouter-oracle"))]:  # fmt: skip
        with pytest.raises(UsageError):
            RunOptions(input="x", output="y", **bad).validate()
    for flags, message in ((["--method", "magic"], "--method must be one of"), (["--layer", "0"], "--layer must"),
                           (["--retain", "1.5"], r"--retain must be in \(0, 1\]")):  # fmt: skip
        with pytest.raises(UsageError, match=message):
            parse_run_args(["--input", "x", "--output", "y", *flags])


# --- decoding --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,sr,channels,duration",
    [("meeting.wav", 16000, 1, 25.18), ("podcast.flac", 24000, 2, 29.18), ("lecture.ogg", 22050, 1, 21.2),
     ("news.mp3", 44100, 2, 10.53), ("weather.m4a", 24000, 1, 6.4)],
)  # fmt: skip
def test_examples_decode_to_16k_mono(example_audio_dir, name, sr, channels, duration):
    x = decode_all(example_audio_dir / name)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(x.size / SR - duration) < 0.1
    assert 0.05 < np.abs(x).max() <= 1.0  # real speech, not silence or garbage


def test_resampling_keeps_pitch(tmp_path):
    t = np.arange(44100 * 2) / 44100
    stereo = np.stack([np.sin(2 * np.pi * 1000 * t), np.sin(2 * np.pi * 1000 * t)], 1) * 0.5
    x = decode_all(write_wav(tmp_path / "tone.wav", stereo, sr=44100))
    spectrum = np.abs(np.fft.rfft(x[:SR]))  # 1 s -> 1 Hz bins
    assert abs(int(spectrum.argmax()) - 1000) <= 2
    assert abs(x.size - 2 * SR) <= 2


def test_hostile_inputs_raise_clear_decode_errors(hostile_audio):
    expect = {"empty": "empty", "header_only": "empty", "random_bytes": "decode_error", "text_as_mp3": "decode_error",
              "nan": "invalid_samples", "truncated_m4a": "decode_error"}  # fmt: skip
    for kind, want in expect.items():
        with pytest.raises(DecodeError) as e:
            decode_all(hostile_audio[kind])
        assert e.value.kind == want, (kind, str(e.value))
        assert "\n" not in str(e.value) and str(e.value).startswith(want + ": ")


def test_missing_and_unreadable_sources(tmp_path):
    with pytest.raises(DecodeError, match="^not_found: "):
        decode_all(tmp_path / "gone.wav")
    if os.geteuid() != 0:  # root reads anything
        p = write_wav(tmp_path / "locked.wav", np.zeros(1600, np.float32))
        p.chmod(0)
        with pytest.raises(DecodeError, match="^permission_denied: "):
            decode_all(p)


def test_storage_errors_are_classified():
    from pipeline.decode import _os_error

    denied = OSError("AWS Error ACCESS_DENIED during GetObject operation: Access Denied")
    assert _os_error(denied).kind == "permission_denied"
    assert (
        _os_error(OSError("AWS Error NO_SUCH_KEY during GetObject operation: NoSuchKey")).kind == "not_found"
    )
    assert _os_error(FileNotFoundError(2, "gone")).kind == "not_found"
    assert _os_error(OSError("AWS Error NETWORK_CONNECTION: timeout")).kind == "read_error"


def test_decode_limits(tmp_path):
    p = write_wav(tmp_path / "ten.wav", bursts(10.0)[0])
    with pytest.raises(DecodeError, match="^too_long: "):
        decode_all(p, max_duration_s=5.0)
    with pytest.raises(DecodeError, match="^too_large: "):
        decode_all(p, max_input_bytes=1000)
    m4a = encode(p, tmp_path / "ten.m4a")  # the ffmpeg path has the same limits
    with pytest.raises(DecodeError, match="^too_long: "):
        decode_all(m4a, max_duration_s=5.0)
    with pytest.raises(DecodeError, match="^timeout: "):
        decode_all(m4a, timeout_s=0.0)


# --- chunking --------------------------------------------------------------------------------------------------


def test_quiet_cut_finds_the_gap():
    x, centres = bursts(20.0, gap_every_s=6.0)
    cut = quiet_cut(x, int(3 * SR), int(9 * SR))
    assert abs(cut / SR - 6.0) < 0.25


@pytest.mark.parametrize("seconds", [0.5, 8.0, 8.5, 9.1, 30.0, 61.3])
def test_chunks_cover_the_stream_without_gaps(seconds):
    x, _ = bursts(seconds)
    blocks = [x[i : i + 7001] for i in range(0, x.size, 7001)]  # odd block size on purpose
    chunks = list(chunk_stream(iter(blocks), window_s=8.0))
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert chunks[0].start == 0 and chunks[-1].end == x.size
    assert all(a.end == b.start for a, b in zip(chunks, chunks[1:]))
    assert all(c.audio.size <= 8 * SR for c in chunks)
    assert [c.last for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert np.array_equal(np.concatenate([c.audio for c in chunks]), x)


@pytest.mark.slow
def test_thirty_minute_file_streams_into_window_sized_quiet_chunks(tmp_path):
    """30 min at 44.1 kHz stereo: ordered chunks, no gap, each <= 300 s, cut in the silent gaps, bounded memory."""
    path = tmp_path / "long.wav"
    centres = np.array(write_bursts(path, 1800.0, sr=44100, channels=2, gap_every_s=37.0))
    tracemalloc.start()
    chunks = []
    for c in chunk_stream(decode_stream(LOCAL, str(path)), window_s=300.0):
        chunks.append((c.index, c.start, c.end, c.last))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # Whole, the file is 635 MB as float32 at 44.1 kHz stereo and 115 MB at 16 kHz mono; streaming holds the
    # chunk the caller still references, the next window's blocks and their join (19 MB each), plus one block.
    assert peak < 75e6, peak
    assert [c[0] for c in chunks] == list(range(len(chunks))) and chunks[-1][3]
    assert chunks[0][1] == 0 and abs(chunks[-1][2] - 1800 * SR) <= 2
    assert all(a[2] == b[1] for a, b in zip(chunks, chunks[1:]))
    assert all(e - s <= 300 * SR for _, s, e, _ in chunks)
    assert 6 <= len(chunks) <= 8
    for _, _, end, _ in chunks[:-1]:  # every cut falls in a silent gap (0.6 s wide)
        assert np.abs(centres - end / SR).min() < 0.3


def test_decode_stage_turns_each_bad_source_into_one_error_row(hostile_audio, tmp_path, example_audio_dir):
    sources = [Source(id=k, uri=str(p)) for k, p in sorted(hostile_audio.items())]
    sources.append(Source(id="vanished", uri=str(tmp_path / "vanished.wav")))
    sources.append(Source(id="forbidden", uri="http://x/y.wav", error="forbidden: scheme 'http' not allowed"))
    sources.append(Source(id="good", uri=str(example_audio_dir / "meeting.wav")))
    items = source_items(sources, RunOptions(input="x", output="y"), "r1", "a1")
    rows = []
    for item in items:
        for t in decode_and_chunk(
            pa.Table.from_pylist([item]), window_s=10.0, limits=DecodeLimits(), s3_endpoint=None
        ):
            assert t.schema == SEGMENT_SCHEMA
            rows += t.to_pylist()
    by_id: dict[str, list] = {}
    for r in rows:
        by_id.setdefault(r["id"], []).append(r)
    errors = {i: [r for r in rs if r["status"] == "error"] for i, rs in by_id.items()}
    for bad in [
        "empty",
        "header_only",
        "random_bytes",
        "text_as_mp3",
        "nan",
        "truncated_m4a",
        "vanished",
        "forbidden",
    ]:
        assert len(by_id[bad]) == 1 and len(errors[bad]) == 1 and by_id[bad][0]["last"], bad
    assert errors["vanished"][0]["error"].startswith("not_found:")
    assert errors["forbidden"][0]["error"].startswith("forbidden:")
    assert [r["silent"] for r in by_id["silent"]] == [True] and not errors["silent"]
    good = by_id["good"]
    assert len(good) == 3 and not errors["good"] and [r["last"] for r in good] == [False, False, True]


# --- sink and reading rule -------------------------------------------------------------------------------------


def chunk_row(sid, idx, last, run="r1", attempt="a1", status="ok", text="t"):
    return {"run_id": run, "attempt_id": attempt, "id": sid, "source": f"/x/{sid}", "chunk_index": idx,
            "start_s": idx * 10.0, "end_s": idx * 10.0 + 10, "status": status, "error": "" if status == "ok" else
            "decode_error: bad", "task": "asr", "text": text, "last": last, "audio_tokens": 250, "kept_tokens": 150,
            "alpha_semantic": 0.5, "alpha_uniform": 0.3, "alpha_acoustic": 0.2}  # fmt: skip


def test_sink_commits_a_source_only_when_all_its_chunks_are_durable(tmp_path):
    root = str(tmp_path / "out")
    sink = ResultSink(LOCAL, root, "r1", "a1", commit_every_s=1e9)
    sink.add([chunk_row("a", 1, False), chunk_row("b", 0, True, status="error")])
    sink.commit()
    assert read_results(root).files.column("id").to_pylist() == ["b"]  # a misses chunks 0 and 2
    sink.add([chunk_row("a", 0, False), chunk_row("a", 1, False), chunk_row("a", 2, True, text="end")])
    assert sink.close() == []
    res = read_results(root)
    assert res.files.column("id").to_pylist() == ["a", "b"]
    a = res.files.to_pylist()[0]
    assert a["status"] == "ok" and a["num_chunks"] == 3 and a["text"] == "t t end" and a["duration_s"] == 30.0
    assert a["kept_tokens"] == 450 and res.chunks.num_rows == 4  # the duplicate chunk 1 was dropped
    assert res.files.to_pylist()[1]["error_kind"] == "decode_error"


def test_reading_rule_ignores_uncommitted_chunks_and_half_written_parts(tmp_path):
    root = str(tmp_path / "out")
    # A killed attempt: chunk rows of "a" landed, its files row never did; a truncated part from another writer.
    killed = ResultSink(LOCAL, root, "r1", "dead", commit_every_s=1e9)
    killed.add([chunk_row("a", 0, False, attempt="dead")])
    killed.commit()
    good = pq.read_table(next((tmp_path / "out" / "chunks" / "run=r1").glob("*.parquet")))
    write_table_atomic(LOCAL, f"{root}/chunks/run=r1/whole.parquet", good)
    with open(f"{root}/chunks/run=r1/broken.parquet", "wb") as f:
        f.write(open(f"{root}/chunks/run=r1/whole.parquet", "rb").read()[:100])
    (tmp_path / "out" / "chunks" / "run=r1" / ".part-x.tmp").write_bytes(b"PAR1")
    assert read_results(root).files.num_rows == 0 and read_results(root).chunks.num_rows == 0
    assert completed_ids(LOCAL, root) == set()
    # The rerun commits "a" (error first, then retried ok): each source appears once, the latest commit wins.
    r2 = ResultSink(LOCAL, root, "r2", "b2")
    r2.add([chunk_row("a", 0, True, run="r2", attempt="b2", status="error")])
    r2.close()
    assert completed_ids(LOCAL, root) == {"a"} and completed_ids(LOCAL, root, retry_errors=True) == set()
    r3 = ResultSink(LOCAL, root, "r3", "c3")
    r3.add(
        [chunk_row("a", 0, False, run="r3", attempt="c3"), chunk_row("a", 1, True, run="r3", attempt="c3")]
    )
    r3.close()
    res = read_results(root)
    assert res.files.to_pylist()[0]["run_id"] == "r3" and res.files.num_rows == 1
    assert res.chunks.column("attempt_id").to_pylist() == ["c3", "c3"]
    assert res.chunks.schema == CHUNK_SCHEMA


def test_no_partial_file_is_visible_while_writing(tmp_path, monkeypatch):
    calls = []
    real = pq.write_table

    def spy(table, where, **kw):
        calls.append(where)
        assert not os.path.exists(str(tmp_path / "x.parquet"))
        real(table, where, **kw)

    monkeypatch.setattr(pq, "write_table", spy)
    write_table_atomic(LOCAL, str(tmp_path / "x.parquet"), pa.table({"a": [1]}))
    assert os.path.basename(calls[0]).startswith(".") and os.path.exists(tmp_path / "x.parquet")
    assert [p.name for p in tmp_path.iterdir()] == ["x.parquet"]


# --- the inference actor's UDF, called directly (as Ray's docs advise) -----------------------------------------


@dataclass
class FakeGen:
    text: str
    audio_tokens: int = 100
    kept_tokens: int = 60
    routing: dict | None = None
    kv_bytes_full: int = 10
    kv_bytes_kept: int = 6
    prefill_s: float = 0.1
    decode_s: float = 0.01
    prepare_s: float = 0.002
    skipped_s: float = 0.0
    silent: bool = False


class FakeLALM:
    """workers.engine.Engine without a model: one token per 100 samples, every clip in one group."""

    model_id, window_s, asr_prompt = "fake", 30.0, "transcribe"

    def __init__(self):
        self.calls = []

    def generate(self, audios, prompts, options, max_new_tokens=64):
        self.calls.append(len(audios))
        for a in audios:
            if a.size < 640:
                raise ValueError("audio sample 0: too short")
        return [FakeGen(f"n={a.size}", routing={"alpha": (0.5, 0.3, 0.2), "spread": 0.1}) for a in audios]

    def token_counts(self, num_samples, prompt):
        return num_samples // 100 + 1, num_samples // 100

    def batch_groups(self, num_samples):
        return [list(range(len(num_samples)))]

    def kv_tokens(self, counts, options, max_new_tokens):
        return len(counts) * (max(t for t, _ in counts) + max_new_tokens)

    def stream(self, requests, options, max_new_tokens, *, slots, stats=None):
        """One request at a time through `generate`: (key, result or the exception it raised)."""
        for r in requests:
            try:
                (gen,) = self.generate([r.audio], [r.prompt], options, max_new_tokens)
            except ValueError as e:
                yield r.key, e
            else:
                yield r.key, gen


def test_the_fake_and_the_engine_implement_the_interface_the_worker_types():
    from headrouter import load_lalm
    from workers.engine import Engine

    wanted = {n for n in vars(Engine) if not n.startswith("_")} | set(Engine.__annotations__)
    assert {"generate", "token_counts", "batch_groups", "kv_tokens", "window_s", "asr_prompt"} <= wanted
    for engine in (FakeLALM(), load_lalm("tiny-random")):
        assert [n for n in sorted(wanted) if not hasattr(engine, n)] == [], type(engine).__name__


def segment_batch(rows):
    return {k: np.array([r[k] for r in rows], dtype=object) for k in SEGMENT_SCHEMA.names}


def seg(sid, n, status="ok", silent=False, error=""):
    audio = np.full(n, 0.1, np.float32).tobytes()
    return {"run_id": "r", "attempt_id": "a", "id": sid, "source": sid, "task": "asr", "question": None,
            "choices": None, "chunk_index": 0, "start_s": 0.0, "end_s": n / SR, "last": True, "silent": silent,
            "status": status, "error": error, "audio": audio}  # fmt: skip


def test_actor_udf_isolates_a_bad_sample_in_a_batch():
    lalm = FakeLALM()
    worker = InferenceWorker(WorkerOptions(), CHUNK_SCHEMA, lalm=lalm)
    batch = segment_batch([seg("a", 16000), seg("short", 10), seg("b", 8000), seg("s", 16000, silent=True),
                           seg("e", 0, status="error", error="decode_error: bad"), seg("long", 31 * SR)])  # fmt: skip
    seen = []
    worker._metrics = type("Recorder", (), {"observe": lambda self, row: seen.append(row["id"])})()
    out = worker(batch)
    assert out.schema == CHUNK_SCHEMA
    assert sorted(seen) == sorted(
        ["a", "short", "b", "s", "e", "long"]
    )  # the metrics hook saw every row once
    rows = {r["id"]: r for r in out.to_pylist()}
    assert (
        rows["a"]["status"] == "ok" and rows["a"]["text"] == "n=16000" and rows["a"]["alpha_semantic"] == 0.5
    )
    assert rows["b"]["text"] == "n=8000" and rows["b"]["kept_tokens"] == 60
    assert rows["short"]["status"] == "error" and rows["short"]["error"].startswith("inference_error:")
    assert rows["s"]["status"] == "ok" and rows["s"]["text"] == ""  # silence never reaches the model
    assert rows["e"]["error"] == "decode_error: bad"
    assert rows["long"]["error"].startswith("too_long:")
    assert lalm.calls == [3, 1, 1, 1]  # one batched call, then one at a time to find the bad sample
    assert all(r["model"] == "fake" and r["method"] == "headrouter" for r in rows.values())


def test_actor_udf_with_the_real_tiny_model(example_audio_dir):
    worker = InferenceWorker(WorkerOptions(model="tiny-random"), CHUNK_SCHEMA)
    x = decode_all(example_audio_dir / "news.mp3")
    rows = worker.infer([seg("news", 0) | {"audio": x.tobytes(), "end_s": x.size / SR},
                         seg("tiny", 1) | {"audio": x[:1].tobytes()}])  # fmt: skip
    assert rows[0]["status"] == "ok", rows[0]["error"]
    assert rows[0]["audio_tokens"] == 263 and rows[0]["kept_tokens"] == int(263 * 0.6)
    assert abs(rows[0]["alpha_semantic"] + rows[0]["alpha_uniform"] + rows[0]["alpha_acoustic"] - 1) < 1e-4
    assert rows[1]["status"] == "error" and rows[1]["error"].startswith("invalid_audio:")


def test_chunk_window_is_the_window_the_loaded_engine_enforces():
    from headrouter import load_lalm
    from headrouter.engine.loading import model_window_s, resolve_model

    for alias, window in (("tiny-random", 300.0), ("tiny-random-qwen2-audio", 30.0)):
        folder = resolve_model(alias)
        assert model_window_s(alias) == model_window_s(folder) == load_lalm(alias).window_s == window
    assert model_window_s("tiny-synth") == 300.0
